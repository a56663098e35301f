/**
 * Capabilities of the adapters the plans are written for, as Dawn reports them (design.md §5: Dawn's
 * source and commits, ggml-webgpu, ONNX Runtime's WebGPU kernels, vendor documentation; none measured
 * here except lavapipe). One table, read by the plan tests (kernels-test/plan-profiles.test.ts) and meant
 * for the dry-run mock device. Binding limits: what Dawn passes through from the driver.
 */
import type { Capabilities, MatrixConfig } from '../src/runtime/caps.js';
import { configsOf, SGMAT_FEATURE, SUBGROUP_SIZE_CONTROL } from '../src/runtime/caps.js';

export interface DeviceProfile {
  name: string;
  caps: Capabilities;
  maxBindingBytes: number;
}

const cfg = (component: string, result: string, M: number, N: number, K: number): MatrixConfig => ({ component, result, M, N, K });
const BASE = ['shader-f16', 'subgroups', 'timestamp-query', SGMAT_FEATURE];

function profile(name: string, p: Omit<Capabilities, 'matrixConfigs' | 'f16ResultConfigs' | 'features'> & { features: string[] }, maxBindingBytes: number): DeviceProfile {
  return {
    name,
    maxBindingBytes,
    caps: { ...p, features: new Set(p.features), matrixConfigs: configsOf(p.allMatrixConfigs, 'f32'), f16ResultConfigs: configsOf(p.allMatrixConfigs, 'f16') },
  };
}

const nvidiaConfigs = ['f32', 'f16'].flatMap((r) => [cfg('f16', r, 16, 16, 16), cfg('f16', r, 16, 8, 16), cfg('f16', r, 16, 8, 8)]);
const limits = (storage: number) => ({ maxWorkgroupStorage: storage, maxInvocations: 1024, maxWorkgroupSizeX: 1024 });

export const PROFILES: DeviceProfile[] = [
  profile('H100 (Vulkan)', {
    vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H100 80GB HBM3', cpu: false,
    features: [...BASE, SUBGROUP_SIZE_CONTROL], subgroupMinSize: 32, subgroupMaxSize: 32, allMatrixConfigs: nvidiaConfigs, ...limits(49152),
  }, 2 ** 32 - 4),
  profile('RTX 4090 (Vulkan)', {
    vendor: 'nvidia', architecture: 'lovelace', description: 'NVIDIA GeForce RTX 4090', cpu: false,
    features: [...BASE, SUBGROUP_SIZE_CONTROL], subgroupMinSize: 32, subgroupMaxSize: 32, allMatrixConfigs: nvidiaConfigs, ...limits(49152),
  }, 2 ** 31),
  profile('M2 Max (Metal)', {
    vendor: 'apple', architecture: 'metal-3', description: 'Apple M2 Max', cpu: false,
    features: BASE, subgroupMinSize: 32, subgroupMaxSize: 32,
    allMatrixConfigs: [cfg('f32', 'f32', 8, 8, 8), cfg('f16', 'f16', 8, 8, 8)], ...limits(32768),
  }, 2 ** 31),
  profile('RDNA3 (Vulkan)', {
    vendor: 'amd', architecture: 'rdna-3', description: 'AMD Radeon RX 7900 XTX', cpu: false,
    features: [...BASE, SUBGROUP_SIZE_CONTROL], subgroupMinSize: 32, subgroupMaxSize: 64,
    allMatrixConfigs: [cfg('f16', 'f32', 16, 16, 16), cfg('f16', 'f16', 16, 16, 16)], ...limits(65536),
  }, 2 ** 31),
  profile('Xe2 (Vulkan, Mesa)', {
    vendor: 'intel', architecture: 'xe-2lpg', description: 'Intel(R) Arc(TM) B580 Graphics (BMG G21)', cpu: false,
    features: [...BASE, SUBGROUP_SIZE_CONTROL], subgroupMinSize: 16, subgroupMaxSize: 32,
    allMatrixConfigs: [cfg('f16', 'f32', 8, 16, 16), cfg('f16', 'f16', 8, 16, 16)], ...limits(65536),
  }, 2 ** 31),
  profile('lavapipe (Mesa 26.1)', {
    vendor: 'mesa', architecture: 'software', description: 'llvmpipe: Mesa 26.1.6-1~bpo13+1 (LLVM 19.1.7)', cpu: true,
    features: [...BASE, SUBGROUP_SIZE_CONTROL], subgroupMinSize: 8, subgroupMaxSize: 8,
    allMatrixConfigs: [cfg('f16', 'f16', 8, 8, 8), cfg('f16', 'f32', 8, 8, 8), cfg('u8', 'u32', 8, 8, 8), cfg('i8', 'i32', 8, 8, 8)], ...limits(32768),
  }, 2 ** 27),
];

export function byName(name: string): DeviceProfile {
  const p = PROFILES.find((q) => q.name.startsWith(name));
  if (!p) throw new Error(`no device profile ${name}`);
  return p;
}

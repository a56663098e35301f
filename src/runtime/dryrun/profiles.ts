/**
 * Device profiles of the dry run (`STEP1X_DRYRUN=<id>`): what Dawn reports on each adapter class —
 * adapter info, the limits our code reads, features, subgroup sizes and subgroup-matrix configs — plus
 * the device's memory, which WebGPU never tells but the dry run needs for its verdict.
 *
 * Sources (../shared/design.md §5): Dawn's Vulkan backend lists the VK_KHR_cooperative_matrix configs it
 * accepts (f16 on NVIDIA only with `vulkan_enable_f16_on_nvidia`, which we pass); its Metal backend lists
 * 8×8×8 f32→f32 and f16→f16 on Apple7+ (no f16→f32 in the Dawn of npm webgpu 0.6.x: GEMMs run on the
 * f16→f16 config with f32 k-chunk sums, attention on the workgroup-tiled kernel); lavapipe's numbers are those
 * `step1x devices --json` prints on Mesa 25 (limits) and Mesa 26 in the trixie root (configs).
 * Limits a Vulkan driver reports as 2^32 − 1 appear as Dawn clamps them (multiples of 4). Values no public
 * source pins down (exact maxBufferSize on Apple, Intel workgroup storage) are the conservative choice; a
 * profile is a model of the adapter, to be corrected from a real `step1x devices --json` dump.
 */
export interface RawMatrixConfig {
  M: number;
  N: number;
  K: number;
  componentType: string;
  resultComponentType: string;
}

export interface DeviceProfile {
  id: string;
  /** What `adapter.info` says. */
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  backend: 'vulkan' | 'metal';
  isFallbackAdapter: boolean;
  /** Dedicated (or, on Apple, GPU-usable unified) memory in bytes. */
  memoryBytes: number;
  features: string[];
  subgroupMinSize: number;
  subgroupMaxSize: number;
  subgroupMatrixConfigs: RawMatrixConfig[];
  limits: Record<string, number>;
}

const cfg = (M: number, N: number, K: number, componentType: string, resultComponentType: string): RawMatrixConfig => ({ M, N, K, componentType, resultComponentType });
const GB = 1e9;
const GiB = 2 ** 30;

/** The WebGPU limits every profile shares unless it overrides them. */
const BASE_LIMITS: Record<string, number> = {
  maxComputeInvocationsPerWorkgroup: 1024,
  maxComputeWorkgroupSizeX: 1024,
  maxComputeWorkgroupSizeY: 1024,
  maxComputeWorkgroupSizeZ: 64,
  maxComputeWorkgroupsPerDimension: 65535,
  maxStorageBuffersPerShaderStage: 16,
  maxUniformBufferBindingSize: 65536,
  minStorageBufferOffsetAlignment: 32,
  minUniformBufferOffsetAlignment: 256,
  maxBindGroups: 4,
};
const GPU_FEATURES = ['shader-f16', 'subgroups', 'timestamp-query', 'subgroup-size-control', 'chromium-experimental-subgroup-matrix'];
const NVIDIA_CONFIGS = [
  cfg(16, 16, 16, 'f16', 'f16'), cfg(16, 16, 16, 'f16', 'f32'),
  cfg(16, 8, 16, 'f16', 'f16'), cfg(16, 8, 16, 'f16', 'f32'),
  cfg(16, 8, 8, 'f16', 'f16'), cfg(16, 8, 8, 'f16', 'f32'),
];
const VK_MAX_BINDING = 2 ** 32 - 4; // maxStorageBufferRange 2^32 − 1, clamped to a multiple of 4

export const PROFILES: Record<string, DeviceProfile> = {
  h100: {
    id: 'h100', vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H100 80GB HBM3', description: 'NVIDIA H100 80GB HBM3 (Vulkan)',
    backend: 'vulkan', isFallbackAdapter: false, memoryBytes: 80 * GB,
    features: GPU_FEATURES, subgroupMinSize: 32, subgroupMaxSize: 32, subgroupMatrixConfigs: NVIDIA_CONFIGS,
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: VK_MAX_BINDING, maxBufferSize: 4 * GiB, maxComputeWorkgroupStorageSize: 49152 },
  },
  rtx4090: {
    id: 'rtx4090', vendor: 'nvidia', architecture: 'lovelace', device: 'NVIDIA GeForce RTX 4090', description: 'NVIDIA GeForce RTX 4090 (Vulkan)',
    backend: 'vulkan', isFallbackAdapter: false, memoryBytes: 24 * GiB,
    features: GPU_FEATURES, subgroupMinSize: 32, subgroupMaxSize: 32, subgroupMatrixConfigs: NVIDIA_CONFIGS,
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: VK_MAX_BINDING, maxBufferSize: 4 * GiB, maxComputeWorkgroupStorageSize: 49152 },
  },
  m2max: {
    id: 'm2max', vendor: 'apple', architecture: 'metal-3', device: 'Apple M2 Max', description: 'Apple M2 Max (Metal)',
    backend: 'metal', isFallbackAdapter: false, memoryBytes: 32 * GiB,
    features: GPU_FEATURES.filter((f) => f !== 'subgroup-size-control'), subgroupMinSize: 32, subgroupMaxSize: 32,
    subgroupMatrixConfigs: [cfg(8, 8, 8, 'f32', 'f32'), cfg(8, 8, 8, 'f16', 'f16')],
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: 16 * GiB, maxBufferSize: 16 * GiB, maxComputeWorkgroupStorageSize: 32768, minStorageBufferOffsetAlignment: 256 },
  },
  rdna3: {
    id: 'rdna3', vendor: 'amd', architecture: 'rdna-3', device: 'AMD Radeon RX 7900 XTX', description: 'AMD Radeon RX 7900 XTX (RADV NAVI31, Vulkan)',
    backend: 'vulkan', isFallbackAdapter: false, memoryBytes: 24 * GiB,
    features: GPU_FEATURES, subgroupMinSize: 32, subgroupMaxSize: 64, subgroupMatrixConfigs: [cfg(16, 16, 16, 'f16', 'f16'), cfg(16, 16, 16, 'f16', 'f32')],
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: VK_MAX_BINDING, maxBufferSize: 4 * GiB, maxComputeWorkgroupStorageSize: 65536 },
  },
  xe2: {
    id: 'xe2', vendor: 'intel', architecture: 'xe-2hpg', device: 'Intel Arc B580 Graphics (BMG G21)', description: 'Intel Arc B580 (Mesa ANV, Vulkan)',
    backend: 'vulkan', isFallbackAdapter: false, memoryBytes: 12 * GiB,
    features: GPU_FEATURES, subgroupMinSize: 16, subgroupMaxSize: 32, subgroupMatrixConfigs: [cfg(8, 16, 16, 'f16', 'f16'), cfg(8, 16, 16, 'f16', 'f32')],
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: VK_MAX_BINDING, maxBufferSize: 4 * GiB, maxComputeWorkgroupStorageSize: 32768 },
  },
  lavapipe: {
    id: 'lavapipe', vendor: 'mesa', architecture: 'software', device: 'llvmpipe (LLVM 19, 256 bits)', description: 'llvmpipe: Mesa 26.1 (lavapipe, Vulkan)',
    backend: 'vulkan', isFallbackAdapter: true, memoryBytes: 128 * GiB,
    features: GPU_FEATURES.filter((f) => f !== 'timestamp-query'), subgroupMinSize: 8, subgroupMaxSize: 8,
    subgroupMatrixConfigs: [cfg(8, 8, 8, 'f16', 'f16'), cfg(8, 8, 8, 'f16', 'f32'), cfg(8, 8, 8, 'u8', 'u32'), cfg(8, 8, 8, 'i8', 'i32')],
    limits: { ...BASE_LIMITS, maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 2 ** 32 - 1, maxComputeWorkgroupStorageSize: 32768, maxComputeWorkgroupSizeZ: 1024, minStorageBufferOffsetAlignment: 16, minUniformBufferOffsetAlignment: 16 },
  },
};

export const PROFILE_IDS = Object.keys(PROFILES);

/** The profile named by `id` (case-insensitive), or undefined. */
export function profileById(id: string): DeviceProfile | undefined {
  return PROFILES[id.toLowerCase()];
}

/**
 * `step1x devices`: the WebGPU adapter step1x would use, its features and the limits that matter
 * (binding size decides how weights are split). No adapter → the runtime's Step1xError(NO_GPU),
 * which main.ts prints as one line.
 */
import type { Command } from 'commander';
import { Gpu } from '../runtime/gpu.js';
import { planGemm } from '../ops/plan-gemm.js';
import { planAttention } from '../ops/plan-attention.js';
import { planConv } from '../ops/plan-conv.js';
import { canStoreF16 } from '../ops/act-dtype.js';
import { gpuOptions, type KernelCliOptions } from './gpu-options.js';
import { exitQuietlyOnEpipe, humanBytes } from './inspect.js';

const BYTE_LIMITS = new Set(['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxUniformBufferBindingSize']);

export async function describeDevices(opts: { json?: boolean } & KernelCliOptions): Promise<void> {
  const g = await Gpu.create(gpuOptions(opts));
  try {
    const d = g.describe();
    const used = d.features.filter((f) => g.hasFeature(f));
    const plans = mainPlans(g);
    const c = g.caps;
    const engine = {
      kernels: g.kernels,
      precision: g.precision,
      subgroupSizes: [c.subgroupMinSize, c.subgroupMaxSize],
      matrixConfigs: c.allMatrixConfigs,
      plans,
    };
    if (opts.json) {
      process.stdout.write(JSON.stringify({ ...d, featuresUsed: used, maxBindingBytes: g.maxBindingBytes, ...engine }, null, 1) + '\n');
      return;
    }
    const lines = [
      `adapter:      ${d.description || '(no description)'}`,
      `vendor:       ${d.vendor || '?'}   architecture: ${d.architecture || '?'}   device: ${d.device || '?'}`,
      `fallback:     ${d.isFallbackAdapter ? 'yes (software adapter)' : 'no'}`,
      `features:     ${d.features.join(', ') || '(none)'}`,
      `used:         ${used.join(', ') || '(none)'}`,
      `kernels:      ${g.kernels} (--kernels / STEP1X_KERNELS), precision ${g.precision}, subgroup sizes ${c.subgroupMinSize}–${c.subgroupMaxSize}`,
      `matrix:       ${c.allMatrixConfigs.map((m) => `${m.component}→${m.result} ${m.M}x${m.N}x${m.K}`).join(', ') || '(no subgroup-matrix configs)'}`,
      'plans:',
      ...plans.map((p) => `  ${p.shape.padEnd(44)} ${p.plan}`),
      'limits:',
      ...Object.entries(d.limits).map(([k, v]) => `  ${k.padEnd(36)} ${String(v).padStart(12)}${BYTE_LIMITS.has(k) ? `  (${humanBytes(v)})` : ''}`),
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    g.destroy();
  }
}

/**
 * The kernel plan for the main shapes of the DiT (1024², CFG batch 2), Qwen2.5-VL and the VAE, as the run
 * plans them: the DiT's GEMMs and attention with the activation storage of its steps (f16 where the device
 * can store it: --precision mixed on the subgroup-matrix family, ops/act-dtype.ts), the VAE's 3x3 conv
 * through planConv (an implicit GEMM on matrix units, or the direct kernel).
 */
export function mainPlans(g: Gpu): { shape: string; plan: string }[] {
  const f16 = canStoreF16(g);
  const gemm = (what: string, M: number, K: number, N: number, act = false) => {
    const half = act && f16;
    const p = planGemm(g, { M, N, K, wdt: 'bf16', ...(half ? { xdt: 'f16' as const } : {}) });
    const plan = p ? p.describe : M <= 4 ? 'register gemv (split-K)' : 'register-tiled f32 (gemm.wgsl tiled)';
    return { shape: `${what} GEMM M=${M} K=${K} N=${N}`, plan: half && p ? `${plan}; x and out stored f16, groups of ${p.groupM} row blocks` : plan };
  };
  const att = (what: string, L: number, H: number, Dh: number, act = false) => {
    const p = planAttention(g, { Lq: L, Lk: L, Dh });
    const storage = !(act && f16) ? '' : p.kind === 'subgroup-matrix' ? '; q, k, v and out stored f16' : '; q, k, v stored f16, widened to f32 for it';
    return { shape: `${what} attention L=${L} H=${H} Dh=${Dh}`, plan: p.describe + storage };
  };
  const conv = planConv(g, { C: 512, O: 512, KH: 3, KW: 3, Ho: 128, Wo: 128, wdt: 'f32' });
  const M = 2 * (4096 + 4096 + 640);
  return [
    gemm('DiT qkv', M, 3072, 9216, true),
    gemm('DiT mlp', M, 3072, 12288, true),
    gemm('DiT single', M, 3072, 21504, true),
    gemm('DiT proj', M, 3072, 3072, true),
    att('DiT', 8832, 24, 128, true),
    gemm('Qwen mlp', 1024, 3584, 18944),
    gemm('Qwen vision', 4096, 1280, 3420),
    att('Qwen text', 1024, 28, 128),
    att('Qwen vision', 4096, 16, 80),
    gemm('VAE attn', 16384, 512, 512),
    { shape: 'VAE conv3x3 512ch at 128²', plan: conv.describe },
  ];
}

export function register(program: Command): void {
  program
    .command('devices')
    .description('show the WebGPU adapter, its features and limits')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean } & KernelCliOptions) => {
      exitQuietlyOnEpipe();
      await describeDevices(opts);
    });
}

/**
 * `step1x tune [--size 512|1024] [--max-dim N] [--json]`: time the GEMM tiles of the device's kernel
 * plan at the model's main shapes (src/ops/tune.ts) and cache the winners per adapter + driver + shape
 * class in the user cache directory; later runs on that adapter reuse them. On a CPU adapter the
 * shapes are capped at 512 per dimension (real sizes take hours there) unless --max-dim says otherwise.
 */
import type { Command } from 'commander';
import { Gpu } from '../runtime/gpu.js';
import { fail } from '../errors.js';
import { tune, modelShapes, tuneCachePath } from '../ops/tune.js';
import { canStoreF16 } from '../ops/act-dtype.js';
import { gpuOptions, type KernelCliOptions } from './gpu-options.js';

export function register(program: Command): void {
  program
    .command('tune')
    .description('autotune the GEMM tiles for this GPU and cache them (per adapter, driver and shape class)')
    .option('--size <px>', 'working size whose shapes are tuned (512 or 1024)', '1024')
    .option('--max-dim <n>', 'cap every GEMM dimension (default: 512 on CPU adapters, none on GPUs)')
    .option('--reps <n>', 'timed runs per tile (minimum is kept)', '2')
    .option('--json', 'print the results as JSON')
    .action(async (o: { size: string; maxDim?: string; reps: string; json?: boolean } & KernelCliOptions) => {
      const size = Number(o.size);
      if (size !== 512 && size !== 1024) fail(`--size must be 512 or 1024, got "${o.size}"`);
      const reps = Number(o.reps);
      if (!Number.isInteger(reps) || reps < 1) fail(`--reps must be a positive integer, got "${o.reps}"`);
      const g = await Gpu.create(gpuOptions(o));
      try {
        const maxDim = o.maxDim !== undefined ? Number(o.maxDim) : g.caps.cpu ? 512 : 0;
        if (!Number.isInteger(maxDim) || maxDim < 0) fail(`--max-dim must be a non-negative integer, got "${o.maxDim}"`);
        const log = o.json ? () => {} : (m: string) => process.stdout.write(m + '\n');
        log(`tune: ${g.kernels} kernels, precision ${g.precision}, size ${size}${maxDim ? `, dims capped at ${maxDim}` : ''}`);
        // DiT steps store activations in f16 where the device can (ops/act-dtype.ts): their GEMMs are tuned so
        const res = await tune(g, modelShapes(size, maxDim, 'bf16', canStoreF16(g) ? 'f16' : 'f32'), { reps, log });
        if (o.json) process.stdout.write(JSON.stringify({ cache: tuneCachePath(), kernels: g.kernels, results: res }) + '\n');
        else log(`tune: ${res.length} shape classes cached in ${tuneCachePath()}`);
      } finally {
        g.destroy();
      }
    });
}

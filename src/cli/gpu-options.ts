/**
 * The Gpu.create options of a command, built from its own options: the kernel family and precision
 * (--kernels / --precision, validated; unset: STEP1X_KERNELS / STEP1X_PRECISION, then auto) and the tuned
 * GEMM tiles of the tune cache. The CLI makes every runtime it uses with these (edit, generate, batch,
 * golden, devices, tune), so nothing a run decides lives in module state.
 */
import { parseKernelSettings } from '../runtime/caps.js';
import type { GpuOptions } from '../runtime/gpu.js';
import { tuneCacheTiles } from '../ops/tune.js';

/** The global options every command takes (main.ts adds them). */
export interface KernelCliOptions {
  kernels?: string;
  precision?: string;
}

export function gpuOptions(o: KernelCliOptions): GpuOptions {
  return { ...parseKernelSettings(o), tiles: tuneCacheTiles };
}

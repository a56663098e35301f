/** Shared helpers for op wrappers: dispatch geometry and argument checks. */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { fail, fmtShape } from '../errors.js';

/** 1-D grid of `ceil(n / wg)` workgroups folded into (x, y) under g's per-dimension limit. Returns [x, y]. */
export function grid1d(g: Gpu, n: number, wg = 256): [number, number] {
  const groups = Math.ceil(n / wg);
  const max = g.maxWorkgroupsPerDim;
  if (groups <= max) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}

export function sameShape(op: string, a: Tensor, b: Tensor, an = 'a', bn = 'b'): void {
  if (a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i]))
    fail(`${op}: ${an} ${fmtShape(a.shape)} and ${bn} ${fmtShape(b.shape)} must have the same shape`);
}

export function requireF32(op: string, ...ts: [string, Tensor][]): void {
  for (const [n, t] of ts) if (t.dtype !== 'f32') fail(`${op}: ${n} must be f32, got ${t.dtype}`);
}

/** Shared helpers for op wrappers: dispatch geometry and argument checks. */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { fail, fmtShape } from '../errors.js';

/** `groups` workgroups folded into (x, y) under g's per-dimension limit (at least one). Returns [x, y]. */
export function foldGrid(g: Gpu, groups: number): [number, number] {
  const max = g.maxWorkgroupsPerDim;
  if (groups <= max) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}

/** 1-D grid of `ceil(n / wg)` workgroups folded as foldGrid does. Returns [x, y]. */
export function grid1d(g: Gpu, n: number, wg = 256): [number, number] {
  return foldGrid(g, Math.ceil(n / wg));
}

export function sameShape(op: string, a: Tensor, b: Tensor, an = 'a', bn = 'b'): void {
  if (a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i]))
    fail(`${op}: ${an} ${fmtShape(a.shape)} and ${bn} ${fmtShape(b.shape)} must have the same shape`);
}

export function requireF32(op: string, ...ts: [string, Tensor][]): void {
  for (const [n, t] of ts) if (t.dtype !== 'f32') fail(`${op}: ${n} must be f32, got ${t.dtype}`);
}

/**
 * Largest c in [1, max] with bytes(c) <= limit (bytes is monotone); 0 when even c = 1 does not fit. The
 * linear ops size their row / column chunks with it so that every bound window stays under the binding limit.
 */
export function largestFitting(max: number, limit: number, bytes: (c: number) => number): number {
  if (bytes(1) > limit) return 0;
  let lo = 1, hi = max;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (bytes(mid) <= limit) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * The guided prediction of a step, shaped as the case stores it: the May 2025 loop guided every image
 * token ([1, 2N, C]); the current one slices the noise tokens first and guides those ([1, N, C]). The
 * values of the first N tokens are the same computation either way.
 */
import type { GoldenContext } from '../registry.js';

export function guidedForReference(ctx: GoldenContext, name: string, guided: Float32Array, L: number, C: number): [Float32Array, number[]] {
  const n = ctx.io.tensors.get(name)?.shape[1];
  if (n !== undefined && n < L) return [guided.subarray(0, n * C), [1, n, C]];
  return [guided, [1, L, C]];
}

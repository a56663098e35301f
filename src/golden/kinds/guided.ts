/**
 * The guided prediction of a step in the layout of the loop the case was made with (never read from the
 * stored tensor): the May 2025 loop (`compat` 2025-05) guided every image token ([1, 2N, C]); the current
 * one slices the noise tokens first and guides those ([1, N, C]). The values of the first N tokens are
 * the same computation either way.
 */
import type { OfficialBehaviour } from '../../pipeline/official.js';

export function guidedForReference(beh: Pick<OfficialBehaviour, 'compat'>, guided: Float32Array, L: number, C: number, reference = true): [Float32Array, number[]] {
  if (beh.compat === 'current' && reference) return [guided.subarray(0, (L / 2) * C), [1, L / 2, C]];
  return [guided, [1, L, C]];
}

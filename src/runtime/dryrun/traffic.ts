/**
 * GEMM re-reads in the dry run's traffic estimate (README "Dry run"). A dispatch's bindings are counted
 * once each (recorder.ts, `bound_bytes`); a tiled GEMM reads its operands more often than that, and this
 * file says how often, from the tile plan in the dispatch's defines and uniforms.
 *
 * Model (DRAM traffic, one dispatch = one chunk of linear()/linearPacked()):
 *   - Walk: groups of G row blocks (G = group_m for gemm-sgmat.wgsl, whose tile order is grouped; 1, the
 *     row-major walk, for every other GEMM kernel); inside a group columns are outer and rows inner.
 *   - B (the weight, with its q8/q4 scales): a column block is read by the G workgroups of one group at
 *     the same time, so DRAM sends it once per group: ceil(tiles_m / G) reads in all.
 *   - A (the activations): a group's slab of G·BM rows is revisited once per column block. It is credited
 *     to L2 (read once) when it is at most L2_REUSE_BYTES, else re-read once per column: tiles_n reads.
 *     L2_REUSE_BYTES is a fixed, conservative share of the 40–96 MB last-level caches of the discrete
 *     profiles (WebGPU does not report L2), so the same shape is modelled alike on every profile.
 *     ADIRECT (A loaded by each subgroup straight from storage, not staged) changes no DRAM count: the SGN
 *     subgroups of a workgroup load the same A fragments within one k-step, so all but the first hit L1/L2.
 *   - The output is written once (in bound_bytes). Attention's K/V re-reads per query tile, and L2 hits
 *     of memory-bound ops, are not modelled.
 */
import { uniformOf, type Uniforms } from '../uniforms.js';

export const L2_REUSE_BYTES = 16 * 2 ** 20;

interface Tile {
  bm: number;
  bn: number;
  group: number;
}

const num = (v: unknown): number => (typeof v === 'number' ? v : NaN);

function tileOf(file: string, entry: string, d: Record<string, string | number | boolean>, u: (name: string) => number): Tile | null {
  if (file === 'gemm-sgmat.wgsl') return { bm: num(d.SGM) * num(d.PM) * num(d.SM), bn: num(d.SGN) * num(d.PN) * num(d.SN), group: Math.max(1, u('group_m')) };
  if (file === 'gemm-wg.wgsl') return { bm: num(d.BM), bn: num(d.BN), group: 1 };
  if (file === 'gemm-quant.wgsl') return { bm: num(d.TM), bn: num(d.WGN) * num(d.TN), group: 1 };
  if (file === 'gemm.wgsl' && entry === 'tiled') return { bm: num(d.TM) * num(d.WGM), bn: num(d.TN) * num(d.WGN), group: 1 };
  if (file === 'gemm.wgsl' && entry === 'gemv') return { bm: u('M'), bn: 4, group: 1 };
  return null; // naive (test oracle): no tile to model
}

/**
 * Bytes a GEMM dispatch reads beyond one pass over each operand. `bound` lists the bytes of its bindings
 * in order: x (A), w (B), then for BLOCKED quantized weights the scales (part of B).
 */
export function gemmRereadBytes(file: string, entry: string, defines: Record<string, string | number | boolean>, uniforms: Uniforms | undefined, bound: readonly number[]): number {
  // The implicit-GEMM conv (CONV) binds the input, not im2col(x): its re-reads are not modelled (VAE stages only).
  if (!file.startsWith('gemm') || defines.CONV || bound.length < 2) return 0;
  const u = (name: string) => uniformOf(uniforms, name);
  const t = tileOf(file, entry, defines, u);
  const M = u('M'), N = u('N');
  if (!t || !(t.bm > 0 && t.bn > 0 && M > 0 && N > 0)) return 0;
  const tilesM = Math.ceil(M / t.bm), tilesN = Math.ceil(N / t.bn);
  const A = bound[0];
  const B = bound[1] + (defines.BLOCKED ? (bound[2] ?? 0) : 0);
  const slab = (A * Math.min(M, t.group * t.bm)) / M;
  const aReads = slab <= L2_REUSE_BYTES ? 1 : tilesN;
  const bReads = Math.ceil(tilesM / t.group);
  return (aReads - 1) * A + (bReads - 1) * B;
}

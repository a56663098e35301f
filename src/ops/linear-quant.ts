/**
 * Linear layers over packed weights: fp8 (E4M3 / E5M2), q8, q4. Where the device's GEMM plan is
 * subgroup-matrix (planGemm), shaders/gemm-sgmat.wgsl with QUANT (codes times block scale narrowed into
 * its f16 W tiles, the same tile and overflow recompute as bf16 weights); otherwise the register tile of
 * shaders/gemm-quant.wgsl.
 *
 * linearPacked(x [..., K] f32, w { data u32 [N, row_words], scales? f16 [N, K/QBLOCK] }, b? [N]) ->
 * [..., N] f32 with bias and activation fused, dequantizing in the kernel (the weights stay packed in
 * GPU memory: 1 byte per weight for fp8 / q8, half a byte for q4, plus 2 bytes per QBLOCK for scales).
 *
 * Splitting as ops/linear.ts: weights along N and activations / outputs along M so that no binding
 * exceeds g.maxBindingBytes; every chunk binds windows (runtime/window.ts) starting on the binding
 * alignment at or below its first element and passes the remaining offset in uniforms.
 */
import type { Tensor } from '../runtime/tensor.js';
import { bindWindow, windowBytes } from '../runtime/window.js';
import type { Gpu } from '../runtime/gpu.js';
import { fail, fmtShape } from '../errors.js';
import { checkOut, type Activation } from './linear.js';
import { outputDtype, withWidened } from './act-dtype.js';
import { warnNoMatrixUnits, planGemm, sgmatBindings, sgmatDirect, overflowCounter } from './plan-gemm.js';
import { GEMM_QUANT, GEMM_SGMAT } from './gemm-params.js';
import { foldGrid, largestFitting } from './util.js';

/** Packed weight formats (the host codecs and their layout: src/io/quant.ts). */
export type PackedFormat = 'fp8_e4m3' | 'fp8_e5m2' | 'q8' | 'q4';

export interface PackedWeight {
  format: PackedFormat;
  /** u32 words [N, row_words] (row_words = K/4, or K/8 for q4). */
  data: Tensor;
  /** f16 [N, K / block] (q8 / q4). */
  scales?: Tensor;
  /** Elements per scale block along K (q8 / q4; io/quant.ts QBLOCK). */
  block?: number;
  N: number;
  K: number;
}

/** Register tile of the `tiled` entry (one pipeline per format; measured on lavapipe like gemm.wgsl's). */
const TILE = { tm: 4, tn: 4, wgn: 32 };

export function linearPacked(x: Tensor, w: PackedWeight, b?: Tensor, opts: { act?: Activation; out?: Tensor; outCol?: number } = {}): Tensor {
  const g = x.gpu;
  const { N, K, format } = w;
  const QBLOCK = w.block ?? 32;
  const blocked = format === 'q8' || format === 'q4';
  const rowWords = format === 'q4' ? K / 8 : K / 4;
  if (x.dtype !== 'f32' && x.dtype !== 'f16') fail(`linearPacked: x must be f32 or f16, got ${x.dtype} ${fmtShape(x.shape)}`);
  if (x.rank < 1 || x.dim(-1) !== K) fail(`linearPacked: x ${fmtShape(x.shape)} last dim must equal K = ${K}`);
  if (K <= 0 || K % (blocked ? QBLOCK : 4) !== 0) fail(`linearPacked: K = ${K} is not a multiple of ${blocked ? QBLOCK : 4} (${format})`);
  if (w.data.dtype !== 'u32' || w.data.numel !== N * rowWords) fail(`linearPacked: ${format} data ${w.data.dtype}${fmtShape(w.data.shape)} must hold ${N} x ${rowWords} u32 words`);
  if (blocked && (!w.scales || w.scales.dtype !== 'f16' || w.scales.numel !== (N * K) / QBLOCK))
    fail(`linearPacked: ${format} needs f16 scales [${N}, ${K / QBLOCK}], got ${w.scales ? w.scales.dtype + fmtShape(w.scales.shape) : 'none'}`);
  if (b && (b.rank !== 1 || b.shape[0] !== N)) fail(`linearPacked: bias ${fmtShape(b.shape)} must be [${N}]`);
  const M = x.numel / K;
  const outShape = [...x.shape.slice(0, -1), N];
  // Matrix units where the device's GEMM plan uses them: the same gemm-sgmat tile, codes dequantized into it.
  const plan = planGemm(g, { M, N, K, wdt: 'f32', xdt: x.dtype });
  const sg = plan?.kind === 'subgroup-matrix' ? plan : null;
  // f16 activation storage (ops/act-dtype.ts): gemm-sgmat reads f16 x (X16) and writes the policy's dtype
  // (O16); the register tile reads f32, so an f16 x is widened for it.
  if (x.dtype === 'f16' && !sg) return withWidened([x], ([x2]) => linearPacked(x2, w, b, opts));
  let out = opts.out;
  const col = opts.outCol ?? 0; // as linear(): columns [col, col + N) of an out with row stride ldo
  const odt = out?.dtype ?? outputDtype(g, !!sg && M > 4);
  if (out) {
    checkOut('linearPacked', out, outShape, M, N, col);
    if (out.dtype === 'f16' && !sg) fail(`linearPacked: an f16 out ${fmtShape(out.shape)} needs the subgroup-matrix GEMM (the register tile writes f32)`);
  } else out = g.empty(outShape, odt, 'linear');
  const ldo = out.dim(-1);
  if (M === 0 || N === 0) return out;
  if (!sg && M > 4) warnNoMatrixUnits(g, `quantized GEMM (${format})`, 'the device plan for this shape is not subgroup-matrix, so the gemm-quant.wgsl register tile runs');
  const defines: Record<string, string | number | boolean> = sg
    ? { ...sg.defines, QUANT: true, FMT: format, QBLOCK, ...(blocked ? { BLOCKED: true } : {}), ACT: opts.act ?? 'none', HAS_BIAS: !!b, ...sgmatBindings(blocked, !!b) }
    : { FMT: format, QBLOCK, ACT: opts.act ?? 'none', HAS_BIAS: !!b, TM: TILE.tm, TN: TILE.tn, WGN: TILE.wgn };
  if (b) defines.BDT = b.dtype;
  if (sg && x.dtype === 'f16') defines.X16 = true;
  if (sg && odt === 'f16') defines.O16 = true;
  const nb = blocked ? K / QBLOCK : 0;
  const limit = g.maxBindingBytes;
  for (let n0 = 0; n0 < N; ) {
    const nc = largestFitting(N - n0, limit, (c) =>
      Math.max(windowBytes(w.data, n0 * rowWords, c * rowWords), blocked ? windowBytes(w.scales!, n0 * nb, c * nb) : 0, b ? windowBytes(b, n0, c) : 0, c * (odt === 'f16' ? 2 : 4) + g.storageAlign));
    if (nc === 0) fail(`linearPacked: one weight row of ${format} ${fmtShape([N, K])} does not fit the binding limit ${limit}`);
    for (let m0 = 0; m0 < M; ) {
      const mc = largestFitting(M - m0, limit, (c) => Math.max(windowBytes(x, m0 * K, c * K) + 16, windowBytes(out!, m0 * ldo + col + n0, (c - 1) * ldo + nc)));
      if (mc === 0) fail(`linearPacked: one activation row of x ${fmtShape(x.shape)} does not fit the binding limit ${limit}`);
      const xs = bindWindow(x, m0 * K, mc * K);
      const ws = bindWindow(w.data, n0 * rowWords, nc * rowWords);
      const ss = blocked ? bindWindow(w.scales!, n0 * nb, nc * nb) : null;
      const bs = b ? bindWindow(b, n0, nc) : null;
      const os = bindWindow(out, m0 * ldo + col + n0, (mc - 1) * ldo + nc);
      const tilesN = Math.ceil(nc / (sg ? sg.bn : TILE.wgn * TILE.tn));
      const [gx, gy] = foldGrid(g, tilesN * Math.ceil(mc / (sg ? sg.bm : TILE.tm)));
      const bindings = [xs.view, ws.view, ...(ss ? [ss.view] : []), ...(bs ? [bs.view] : []), os.view];
      const params = { M: mc, N: nc, K, K4: K >> 2, x_off: xs.off, w_off: ws.off, s_off: ss ? ss.off : 0, b_off: bs ? bs.off : 0, o_off: os.off, ldo, tiles_n: tilesN, wg_x: gx, row_words: rowWords, nb };
      try {
        if (sg) {
          // Vector loads of x and vec4 stores where the chunk allows them (only how the same values move);
          // f16 x in a 16-byte aligned chunk is read straight from storage (ADIRECT, plan-gemm sgmatDirect).
          const direct = x.dtype === 'f16' ? sgmatDirect(sg, K, xs.off, mc) : null;
          const vec = K % 8 === 0 && (!!direct || xs.off % 4 === 0);
          const ovec = ldo % 4 === 0 && nc % 4 === 0 && os.off % 4 === 0;
          g.dispatch({
            file: sg.file,
            defines: { ...defines, ...(vec ? { VEC: true } : {}), ...(ovec ? { OVEC: true } : {}), ...direct },
            uniforms: GEMM_SGMAT({ ...params, group_m: sg.groupM }),
            bindings: [...bindings, overflowCounter(g)],
            workgroups: [gx, gy],
          });
        } else
          g.dispatch({
            file: 'gemm-quant.wgsl',
            entry: 'tiled',
            defines,
            uniforms: GEMM_QUANT(params),
            bindings,
            workgroups: [gx, gy],
          });
      } finally {
        for (const t of bindings) t.dispose();
      }
      m0 += mc;
    }
    n0 += nc;
  }
  return out;
}

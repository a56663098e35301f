/**
 * FLUX QK-norm + RoPE as one pass (shaders/qk-norm-rope.wgsl): rmsNorm over Dh times w, then applyRopeFlux,
 * written into token rows [at, at + Ls) of a joint tensor (the double block's [txt ‖ img] q and k), so the
 * normed tensor, the roped tensor and the concat never go through memory. Same f32 arithmetic as
 * rmsNorm + applyRopeFlux (bit-identical for Dh <= 128, see the shader header).
 *
 * Splitting: when x, out or pe exceed g.maxBindingBytes (img q at 1024² is 201 MB f32), per batch item in
 * token chunks; every binding is a window (runtime/window.ts) with the element offset in uniforms,
 * so no chunk needs aligned rows and out is written in place.
 */
import type { Tensor } from '../runtime/tensor.js';
import { bindWindow } from '../runtime/window.js';
import { uniformStruct } from '../runtime/uniforms.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32 } from './util.js';
import { outputDtype } from './act-dtype.js';
import { overflowCounter } from './plan-gemm.js';

const WIDEN: Record<string, string> = { bf16: 'bf16_at', f16: 'f16_at' };

/** rows of dh (tokens nl x heads per item); x / out / pe element offsets in their windows and per-item strides. */
const QK_NORM_ROPE = uniformStruct('qk-norm-rope.wgsl', [
  'rows', 'nl', 'heads', 'dh', 'x_off', 'x_bs', 'o_off', 'o_bs', 'pe_off', 'pe_bs', 'wg_x', 'eps:f32',
]);

/** Rows [at, at + Ls) of `out` [B, Lt, heads, Dh] receive the result (out made when absent: Lt = Ls, at = 0). */
export interface JointRows {
  out: Tensor;
  at: number;
}

/**
 * x [B, Ls, heads, Dh] f32 or f16 (f16 activation storage, ops/act-dtype.ts), w [Dh], pe [B|1, Lt, Dh/2, 2, 2] (rows [at, at + Ls) used) → out [B, Lt, heads, Dh]
 * (f32, or f16 where the policy stores activations in f16; an `into` out keeps its own dtype).
 */
export function rmsNormRope(x: Tensor, w: Tensor, pe: Tensor, eps: number, into?: JointRows): Tensor {
  const op = 'rmsNormRope';
  requireF32(op, ['pe', pe]);
  if (x.dtype !== 'f32' && x.dtype !== 'f16') fail(`${op}: x ${x.toString()} must be f32 or f16`);
  if (x.rank !== 4 || x.shape[3] % 2 !== 0) fail(`${op}: x ${fmtShape(x.shape)} must be [B, L, heads, Dh] with even Dh`);
  const [B, Ls, heads, Dh] = x.shape;
  const at = into?.at ?? 0;
  const Lt = into ? into.out.shape[1] : Ls;
  if (w.rank !== 1 || w.shape[0] !== Dh) fail(`${op}: w ${fmtShape(w.shape)} must be [${Dh}] for x ${fmtShape(x.shape)}`);
  if (w.dtype !== 'f32' && w.dtype !== 'bf16' && w.dtype !== 'f16') fail(`${op}: w dtype ${w.dtype} not supported (expected f32/bf16/f16)`);
  const Bp = pe.shape[0];
  if (pe.rank !== 5 || (Bp !== 1 && Bp !== B) || pe.shape[1] !== Lt || pe.shape[2] * 2 !== Dh || pe.shape[3] !== 2 || pe.shape[4] !== 2)
    fail(`${op}: pe ${fmtShape(pe.shape)} must be [${B}|1, ${Lt}, ${Dh / 2}, 2, 2] for x ${fmtShape(x.shape)}`);
  if (into) {
    const o = into.out;
    if (o.dtype !== 'f32' && o.dtype !== 'f16') fail(`${op}: out ${o.toString()} must be f32 or f16`);
    if (o.rank !== 4 || o.shape[0] !== B || o.shape[2] !== heads || o.shape[3] !== Dh || !Number.isInteger(at) || at < 0 || at + Ls > Lt)
      fail(`${op}: out ${fmtShape(o.shape)} must be [${B}, L ≥ ${at + Ls}, ${heads}, ${Dh}] to take rows [${at}, ${at + Ls}) of x ${fmtShape(x.shape)}`);
  }
  const g = x.gpu;
  const out = into?.out ?? g.empty(x.shape, outputDtype(g, true), op);
  const defines: Record<string, string | boolean> = { W_DT: w.dtype, W_AT: WIDEN[w.dtype] ?? 'none' };
  if (x.dtype === 'f16') Object.assign(defines, { F16: true, X16: true });
  if (out.dtype === 'f16') Object.assign(defines, { F16: true, O16: true });
  if (x.numel === 0) return out;

  const W = heads * Dh, P = 2 * Dh; // floats per token of x / out and of pe
  const pbs = Bp === 1 ? 0 : Lt * P;
  const dispatch = (b0: number, nb: number, l0: number, nl: number): void => {
    const xs = bindWindow(x, (b0 * Ls + l0) * W, ((nb - 1) * Ls + nl) * W);
    const os = bindWindow(out, (b0 * Lt + at + l0) * W, ((nb - 1) * Lt + nl) * W);
    const ps = bindWindow(pe, (Bp === 1 ? 0 : b0 * Lt) * P + (at + l0) * P, (pbs ? (nb - 1) * Lt : 0) * P + nl * P);
    const rows = nb * nl * heads;
    const [wx, wy] = grid1d(g, rows, 1);
    g.dispatch({
      file: 'qk-norm-rope.wgsl',
      defines,
      uniforms: QK_NORM_ROPE({ rows, nl, heads, dh: Dh, x_off: xs.off, x_bs: Ls * W, o_off: os.off, o_bs: Lt * W, pe_off: ps.off, pe_bs: pbs, wg_x: wx, eps }),
      bindings: [xs.view, w, ps.view, os.view, ...(out.dtype === 'f16' ? [overflowCounter(g)] : [])],
      workgroups: [wx, wy],
    });
    for (const t of [xs.view, os.view, ps.view]) t.dispose();
  };
  const limit = g.maxBindingBytes - g.storageAlign; // a window's alignment slop is under storageAlign bytes
  const maxBytes = Math.max(x.byteLength, out.byteLength, pe.byteLength);
  if (maxBytes <= limit) {
    dispatch(0, B, 0, Ls);
    return out;
  }
  const n = Math.floor(limit / (Math.max(W, P) * 4));
  if (n < 1) fail(`${op}: one token of x ${fmtShape(x.shape)} exceeds the binding limit ${g.maxBindingBytes}`);
  for (let b = 0; b < B; b++) for (let l0 = 0; l0 < Ls; l0 += n) dispatch(b, 1, l0, Math.min(n, Ls - l0));
  return out;
}

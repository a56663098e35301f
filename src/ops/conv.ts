/**
 * Convolution family (shaders/conv2d.wgsl, shaders/groupnorm.wgsl): conv2d, nearest 2x upsampling,
 * GroupNorm (optionally fused with SiLU). conv2d runs as an implicit GEMM on matrix units
 * (shaders/gemm-sgmat.wgsl with CONV) where the plan says so (src/ops/plan-conv.ts), else the direct
 * f32 kernel of shaders/conv2d.wgsl.
 *
 * Tensors larger than `gpu.maxBindingBytes` (the real VAE decoder at 1024² has 128 × 1024² f32 = 512 MB
 * activations) are processed in blocks that each fit one binding:
 *   conv2d    blocks of whole channel planes: input channels [c0, c1) × output channels [o0, o1) per
 *             batch item; later input blocks accumulate onto the partial sums in the output, in the same
 *             k order, so the result is bitwise identical to the unsplit one (the direct kernel; the
 *             implicit GEMM adds each block's f32 sums onto the output, within its f16-operand tolerance).
 *   upsample  blocks of whole planes.
 *   groupNorm reductions run over fixed 1024-element pieces (independent of the split), then a
 *             per-element apply pass over arbitrary element ranges.
 * Blocks are bound as windows (runtime/window.ts) from the aligned offset at or below them, with the
 * element offset in the uniforms (no copies).
 */
import { DTYPE_BYTES, type Tensor } from '../runtime/tensor.js';
import { bindWindow, windowElems } from '../runtime/window.js';
import { uniformStruct, type UniformValues } from '../runtime/uniforms.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32 } from './util.js';
import { warnNoMatrixUnits, overflowCounter } from './plan-gemm.js';
import { planConv, convWeightVectors, type ConvPlan, type ConvVariant } from './plan-conv.js';
import type { SgmatTile } from './plan-gemm.js';
import { GEMM_SGMAT_CONV } from './gemm-params.js';

/** The conv's sizes (CT, O_all: all input / output channels), stride, upsampling, padding and element strides. */
type ConvGeometry = UniformValues<
  'H' | 'W' | 'CT' | 'Ho' | 'Wo' | 'O_all' | 'KH' | 'KW' | 'stride' | 'ups' | 'padT' | 'padL' | 'xs_c' | 'xs_y' | 'xs_x' | 'os_o' | 'os_m'
>;
/** One (input block, output block) of the direct conv: C, O are the block's channels from c0, o0. */
const CONV2D = uniformStruct('conv2d.wgsl', [
  'C', 'H', 'W', 'CT', 'O', 'Ho', 'Wo', 'O_all', 'c0', 'o0', 'padT', 'padL', 'x_off', 'w_off', 'o_off', 'r_off',
  'accum', 'finish', 'wg_x', 'KH', 'KW', 'stride', 'ups', 'xs_c', 'xs_y', 'xs_x', 'os_o', 'os_m',
], { UPSAMPLE: false });
const UPSAMPLE = uniformStruct('conv2d.wgsl', ['n', 'H', 'W', 'x_off', 'o_off', 'wg_x'], { UPSAMPLE: true });
/** S: elements per group, P: pieces per group, GT: groups in all; q0/nq: pieces, e0/n: elements of this dispatch. */
const GROUPNORM = uniformStruct('groupnorm.wgsl', [
  'S', 'P', 'GT', 'q0?', 'nq?', 'base?', 'ybase?', 'e0?', 'n?', 'HW', 'C', 'Cg', 'wg_x?', 'eps:f32', 'xo?', 'yo?',
]);

export interface Conv2dOpts {
  stride?: 1 | 2;
  /** [top, bottom, left, right] zero padding; default 0 (as torch's Conv2d default). */
  pad?: [number, number, number, number];
  /** Added after the bias (`res + conv(x)`), same shape/layout as the output. */
  residual?: Tensor;
  /** x is token-major [B, H*W, C] of the given spatial size instead of [B, C, H, W]. */
  inTokens?: [number, number];
  /** Write the output token-major [B, Ho*Wo, O] instead of [B, O, Ho, Wo]. */
  outTokens?: boolean;
  /** Convolve the nearest-2x upsampled x (2H x 2W) without materialising it (FLUX VAE Upsample). */
  upsample2x?: boolean;
  /** 'auto' (the device plan, src/ops/plan-conv.ts), or force 'direct' / 'subgroup-matrix' (tests, bench). */
  variant?: ConvVariant;
  /** Force the implicit GEMM's tile (tests). */
  tile?: SgmatTile;
}

/** 2-D convolution, f32 activations, weights [O, C, kh, kw] f32|bf16, bias [O] f32. */
export function conv2d(x: Tensor, w: Tensor, b?: Tensor, opts: Conv2dOpts = {}): Tensor {
  requireF32('conv2d', ['x', x]);
  if (w.rank !== 4) fail(`conv2d: w must be [O, C, kh, kw], got ${fmtShape(w.shape)}`);
  if (w.dtype !== 'f32' && w.dtype !== 'bf16') fail(`conv2d: w dtype ${w.dtype} not supported (f32/bf16)`);
  const [O, Cw, KH, KW] = w.shape;
  let B: number, C: number, H: number, W: number;
  if (opts.inTokens) {
    [H, W] = opts.inTokens;
    if (x.rank !== 3 || x.shape[1] !== H * W) fail(`conv2d: x ${fmtShape(x.shape)} is not [B, ${H}*${W}, C] tokens`);
    [B, , C] = x.shape;
  } else {
    if (x.rank !== 4) fail(`conv2d: x must be [B, C, H, W], got ${fmtShape(x.shape)}`);
    [B, C, H, W] = x.shape;
  }
  if (C !== Cw) fail(`conv2d: x ${fmtShape(x.shape)} has ${C} channels but w ${fmtShape(w.shape)} expects ${Cw}`);
  const stride = opts.stride ?? 1;
  if (stride !== 1 && stride !== 2) fail(`conv2d: stride ${stride} not supported (1 or 2)`);
  const [pt, pb, pl, pr] = opts.pad ?? [0, 0, 0, 0];
  const ups = opts.upsample2x ? 1 : 0;
  const Hv = H << ups, Wv = W << ups; // the (virtual) input the kernel slides over
  if ([pt, pb, pl, pr].some((p) => !Number.isInteger(p) || p < 0 || p >= Math.max(KH, KW)))
    fail(`conv2d: pad [${opts.pad}] must be integers in [0, kernel size)`);
  const Ho = Math.floor((Hv + pt + pb - KH) / stride) + 1;
  const Wo = Math.floor((Wv + pl + pr - KW) / stride) + 1;
  if (Ho < 1 || Wo < 1) fail(`conv2d: x ${fmtShape(x.shape)} is smaller than the ${KH}x${KW} kernel`);
  const M = Ho * Wo, HW = H * W, KK = KH * KW;
  const outShape = opts.outTokens ? [B, M, O] : [B, O, Ho, Wo];
  if (b) {
    requireF32('conv2d', ['b', b]);
    if (b.numel !== O) fail(`conv2d: bias ${fmtShape(b.shape)} does not match w ${fmtShape(w.shape)}`);
  }
  const res = opts.residual;
  if (res) {
    requireF32('conv2d', ['residual', res]);
    if (res.rank !== outShape.length || res.shape.some((d, i) => d !== outShape[i]))
      fail(`conv2d: residual ${fmtShape(res.shape)} must have the output shape ${fmtShape(outShape)}`);
  }

  // Block sizes: whole planes per binding (token-major tensors must fit whole per batch item).
  const g = x.gpu;
  const lim = windowElems(x, 4), limW = windowElems(w, DTYPE_BYTES[w.dtype]);
  const cBlk = opts.inTokens ? (HW * C <= lim ? C : 0) : Math.min(C, Math.floor(lim / HW));
  const oBlk = Math.min(O, Math.floor(limW / (C * KK)), opts.outTokens ? (M * O <= lim ? O : 0) : Math.floor(lim / M));
  if (cBlk < 1 || oBlk < 1)
    fail(`conv2d: x ${fmtShape(x.shape)} / w ${fmtShape(w.shape)} cannot be split under the binding limit ${g.maxBindingBytes} bytes`);

  const out = g.empty(outShape, 'f32', 'conv2d');
  const plan = planConv(g, { C, O, KH, KW, Ho, Wo, wdt: w.dtype }, opts.variant, opts.tile);
  // (--precision f32 asks for the direct kernel: nothing to say)
  if (plan.kind === 'direct' && M > 4 && g.precision !== 'f32' && opts.variant !== 'direct')
    warnNoMatrixUnits(g, 'conv2d (VAE)', `the plan for ${Ho}x${Wo} pixels is not subgroup-matrix; the direct conv2d.wgsl runs`);
  const RM = 4, RN = O >= 8 ? 8 : 4; // pixels x output channels per invocation (RM fixed by the shader)
  let slot = 3;
  const defines: Record<string, string | number | boolean> = {
    WDT: w.dtype, RN,
    HAS_BIAS: !!b, RESIDUAL: !!res,
  };
  if (b) defines.B_BIAS = slot++;
  if (res) defines.B_RES = slot++;
  defines.B_OUT = slot;
  // members conv2d.wgsl and the implicit GEMM share; element strides: x channel / row / column, out channel / pixel
  const geom: ConvGeometry = {
    H, W, CT: C, Ho, Wo, O_all: O, KH, KW, stride, ups, padT: pt, padL: pl,
    ...(opts.inTokens ? { xs_c: 1, xs_y: W * C, xs_x: C } : { xs_c: HW, xs_y: W, xs_x: 1 }),
    ...(opts.outTokens ? { os_o: 1, os_m: O } : { os_o: M, os_m: 1 }),
  };
  const mTiles = Math.ceil(M / (64 * RM));
  const gx = Math.min(mTiles, g.maxWorkgroupsPerDim), gz = Math.ceil(mTiles / gx);

  for (let bi = 0; bi < B; bi++) {
    for (let o0 = 0; o0 < O; o0 += oBlk) {
      const no = Math.min(oBlk, O - o0);
      // output block: channels [o0, o0+no) of item bi (planes), or the whole token-major item
      const ow = opts.outTokens ? bindWindow(out, bi * M * O, M * O) : bindWindow(out, (bi * O + o0) * M, no * M);
      const oOff = opts.outTokens ? ow.off + o0 : ow.off;
      const rw = res ? (opts.outTokens ? bindWindow(res, bi * M * O, M * O) : bindWindow(res, (bi * O + o0) * M, no * M)) : null;
      const rOff = rw ? (opts.outTokens ? rw.off + o0 : rw.off) : 0;
      const ww = bindWindow(w, o0 * C * KK, no * C * KK);
      for (let c0 = 0; c0 < C; c0 += cBlk) {
        const nc = Math.min(cBlk, C - c0);
        const xw = opts.inTokens ? bindWindow(x, bi * HW * C, HW * C) : bindWindow(x, (bi * C + c0) * HW, nc * HW);
        const xOff = opts.inTokens ? xw.off + c0 : xw.off;
        const bindings = [xw.view, ww.view];
        if (b) bindings.push(b);
        if (rw) bindings.push(rw.view);
        bindings.push(ow.view);
        if (plan.kind === 'subgroup-matrix') {
          implicitGemm(plan, bindings, !!b, {
            M, no, K: nc * KK, xOff, wOff: ww.off + c0 * KK, o0, oOff, rOff, geom, accum: c0 > 0, fin: c0 + nc >= C, ldw: C * KK,
          });
          xw.view.dispose();
          continue;
        }
        g.dispatch({
          file: 'conv2d.wgsl',
          defines,
          uniforms: CONV2D({
            ...geom, C: nc, O: no, c0, o0, x_off: xOff, w_off: ww.off, o_off: oOff, r_off: rOff,
            accum: c0 > 0 ? 1 : 0, finish: c0 + nc >= C ? 1 : 0, wg_x: gx,
          }),
          bindings,
          workgroups: [gx, Math.ceil(no / RN), gz],
        });
        xw.view.dispose();
      }
      ow.view.dispose();
      rw?.view.dispose();
      ww.view.dispose();
    }
  }
  return out;
}

interface GemmChunk {
  M: number;
  no: number;
  K: number;
  xOff: number;
  wOff: number;
  o0: number;
  oOff: number;
  rOff: number;
  geom: ConvGeometry;
  accum: boolean;
  fin: boolean;
  ldw: number;
}

/** One channel block of the conv as gemm-sgmat.wgsl with CONV (bindings: x, w, bias?, res?, out). */
function implicitGemm(plan: ConvPlan, bindings: Tensor[], bias: boolean, c: GemmChunk): void {
  const p = plan.gemm!;
  const g = bindings[0].gpu;
  const res = bindings.length === (bias ? 5 : 4);
  let slot = 3;
  const defines: Record<string, string | number | boolean> = { ...p.defines, WDT: bindings[1].dtype, ACT: 'none', HAS_BIAS: bias, CONV: true, RESIDUAL: res };
  if (bias) Object.assign(defines, { BDT: 'f32', B_BIAS: slot++ });
  if (res) defines.B_RES = slot++;
  defines.B_OUT = slot++;
  defines.B_OVF = slot;
  if (convWeightVectors(bindings[1].dtype, c.K, c.wOff, c.ldw)) defines.WVEC = true; // vec4 weight staging
  const tilesN = Math.ceil(c.no / p.bn);
  const groups = tilesN * Math.ceil(c.M / p.bm);
  const gx = Math.min(groups, g.maxWorkgroupsPerDim), gy = Math.ceil(groups / gx);
  g.dispatch({
    file: p.file,
    defines,
    // b_off: the block's first output channel (the bias is bound whole); ldo unused (out strides os_o, os_m)
    uniforms: GEMM_SGMAT_CONV({
      ...c.geom, M: c.M, N: c.no, K: c.K, K4: c.K >> 2, x_off: c.xOff, w_off: c.wOff, b_off: c.o0, o_off: c.oOff, ldo: 0,
      tiles_n: tilesN, wg_x: gx, group_m: p.groupM, r_off: c.rOff, accum: c.accum ? 1 : 0, fin: c.fin ? 1 : 0, ldw: c.ldw,
    }),
    bindings: [...bindings, overflowCounter(g)],
    workgroups: [gx, gy],
  });
}

/** Nearest-neighbour 2x upsampling of [B, C, H, W] (torch interpolate(scale_factor=2, mode='nearest')). */
export function upsampleNearest2x(x: Tensor): Tensor {
  requireF32('upsampleNearest2x', ['x', x]);
  if (x.rank !== 4) fail(`upsampleNearest2x: x must be [B, C, H, W], got ${fmtShape(x.shape)}`);
  const [B, C, H, W] = x.shape;
  const g = x.gpu;
  const out = g.empty([B, C, 2 * H, 2 * W], 'f32', 'upsample2x');
  const planes = B * C, HW = H * W;
  const blk = Math.min(planes, Math.floor(windowElems(x, 4) / (4 * HW)));
  if (blk < 1) fail(`upsampleNearest2x: a plane of x ${fmtShape(x.shape)} does not fit the binding limit`);
  for (let p0 = 0; p0 < planes; p0 += blk) {
    const np = Math.min(blk, planes - p0);
    const xw = bindWindow(x, p0 * HW, np * HW), ow = bindWindow(out, p0 * 4 * HW, np * 4 * HW);
    const n = np * 4 * HW;
    const [gx, gy] = grid1d(g, n);
    g.dispatch({
      file: 'conv2d.wgsl',
      entry: 'upsample2x',
      defines: { UPSAMPLE: true },
      uniforms: UPSAMPLE({ n, H, W, x_off: xw.off, o_off: ow.off, wg_x: gx }),
      bindings: [xw.view, ow.view],
      workgroups: [gx, gy],
    });
    xw.view.dispose();
    ow.view.dispose();
  }
  return out;
}

const PIECE = 1024; // must equal PIECE in shaders/groupnorm.wgsl

/**
 * GroupNorm over [B, C, H, W]: per (batch, group of C/groups channels) mean and variance (two passes,
 * f32), then (x - mean) / sqrt(var + eps) * w[c] + b[c]; `opts.silu` fuses x*sigmoid(x) after it.
 */
export function groupNorm(x: Tensor, groups: number, w?: Tensor, b?: Tensor, eps = 1e-6, opts: { silu?: boolean } = {}): Tensor {
  requireF32('groupNorm', ['x', x]);
  if (x.rank < 2) fail(`groupNorm: x must be [B, C, ...], got ${fmtShape(x.shape)}`);
  const [B, C] = x.shape;
  const HW = x.numel / (B * C || 1);
  if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) fail(`groupNorm: ${groups} groups do not divide C=${C} of x ${fmtShape(x.shape)}`);
  if (!!w !== !!b) fail('groupNorm: give both w and b or neither');
  if (w && b) {
    requireF32('groupNorm', ['w', w], ['b', b]);
    if (w.numel !== C || b.numel !== C) fail(`groupNorm: w ${fmtShape(w.shape)} / b ${fmtShape(b.shape)} must have C=${C} elements`);
  }
  const g = x.gpu;
  const Cg = C / groups, S = Cg * HW, P = Math.ceil(S / PIECE), GT = B * groups, Q = GT * P;
  const out = g.empty(x.shape, 'f32', 'groupnorm');
  if (x.numel === 0) return out;
  const part = g.empty([Q], 'f32', 'groupnorm.part');
  const stats = g.empty([2 * GT], 'f32', 'groupnorm.stats');
  const lim = windowElems(x, 4);
  if (lim < PIECE) fail(`groupNorm: binding limit ${g.maxBindingBytes} bytes is below one ${PIECE}-element piece`);
  const pieceStart = (q: number) => Math.floor(q / P) * S + (q % P) * PIECE;
  const pieceEnd = (q: number) => Math.min(pieceStart(q) + PIECE, (Math.floor(q / P) + 1) * S);
  const uni = (o: Partial<Parameters<typeof GROUPNORM>[0]>) => GROUPNORM({ S, P, GT, HW, C, Cg, eps, ...o });
  const perDispatch = Math.floor(lim / PIECE);
  for (const pass of ['mean', 'sq'] as const) {
    for (let q0 = 0; q0 < Q; q0 += perDispatch) {
      const nq = Math.min(perDispatch, Q - q0);
      const base = pieceStart(q0);
      const xw = bindWindow(x, base, pieceEnd(q0 + nq - 1) - base);
      const [gx, gy] = grid1d(g, nq, 1);
      g.dispatch({
        file: 'groupnorm.wgsl',
        defines: { ENTRY: 'partial', PASS: pass },
        uniforms: uni({ q0, nq, base, xo: xw.off, wg_x: gx }),
        bindings: pass === 'mean' ? [xw.view, part] : [xw.view, stats, part],
        workgroups: [gx, gy],
      });
      xw.view.dispose();
    }
    g.dispatch({
      file: 'groupnorm.wgsl',
      defines: { ENTRY: 'finalize', PASS: pass },
      uniforms: uni({}),
      bindings: [part, stats],
      workgroups: [Math.ceil(GT / 64)],
    });
  }
  for (let e0 = 0; e0 < x.numel; e0 += lim) {
    const n = Math.min(lim, x.numel - e0);
    const xw = bindWindow(x, e0, n), yw = bindWindow(out, e0, n);
    const [gx, gy] = grid1d(g, n);
    g.dispatch({
      file: 'groupnorm.wgsl',
      defines: { ENTRY: 'apply', AFFINE: !!w, SILU: !!opts.silu },
      uniforms: uni({ e0, n, base: e0, ybase: e0, xo: xw.off, yo: yw.off, wg_x: gx }),
      bindings: w && b ? [xw.view, stats, w, b, yw.view] : [xw.view, stats, yw.view],
      workgroups: [gx, gy],
    });
    xw.view.dispose();
    yw.view.dispose();
  }
  part.dispose();
  stats.dispose();
  return out;
}

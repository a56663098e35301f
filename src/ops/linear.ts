/**
 * Linear layers and matmul (shaders/gemm.wgsl).
 *
 * linear(x [..., K] f32, w [N, K] f32|f16|bf16, b? [N]) -> [..., N] f32, bias and activation fused.
 * On the subgroup-matrix plan x may also be stored f16 and the output written f16 (`dtype`; f16 activation
 * storage, src/ops/act-dtype.ts): out-of-range f16 outputs are counted in overflow word 2.
 * Kernel choice: M <= 4 -> `gemv` (split-K over a workgroup, weights streamed once), otherwise the
 * register-tiled `tiled` kernel; `variant: 'naive'` forces the one-output-per-invocation kernel
 * (test oracle and benchmark baseline).
 *
 * Splitting: a binding may not exceed g.maxBindingBytes (128 MiB on most devices; the DiT's 21504x3072
 * bf16 weight is 126 MiB and its f32 outputs reach 1.5 GB). Weights are split along N and activations /
 * outputs along M (tokens). Every chunk binds windows (runtime/window.ts) that start on the binding
 * alignment at or below the chunk's first element and passes the remaining element offset in uniforms;
 * each chunk writes straight into its block of the full output (column offset + row stride), so no
 * gather pass is needed.
 */
import type { Tensor, DType } from '../runtime/tensor.js';
import { DTYPE_BYTES } from '../runtime/tensor.js';
import { bindWindow, windowBytes } from '../runtime/window.js';
import type { Gpu, Kernel } from '../runtime/gpu.js';
import { fail, fmtShape } from '../errors.js';
import { outputDtype, withWidened } from './act-dtype.js';
import { planGemm, overflowCounter, sgmatBindings, sgmatDirect, type GemmPlan } from './plan-gemm.js';
import { GEMM, gemmUniforms } from './gemm-params.js';
import { foldGrid, largestFitting } from './util.js';

export type Activation = 'silu' | 'gelu_tanh' | 'gelu_erf';
/** 'subgroup-matrix' / 'workgroup' force those kernels (src/ops/plan-gemm.ts); 'auto' follows the device's plan. */
export type GemmVariant = 'auto' | 'naive' | 'tiled' | 'gemv' | 'subgroup-matrix' | 'workgroup';

/** Register-tile geometry of the `tiled` entry: each invocation computes tm x tn outputs. */
export interface TileConfig {
  tm: number;
  tn: number;
  wgm: number;
  wgn: number;
}

/**
 * Default geometry, measured on lavapipe at M = N = K = 1024 f32 (process CPU time, min of 3): 8x4 per
 * invocation with a 1-D workgroup of 32 along N took 422 ms vs 553 ms for 4x4 / 16x4 and 1390 ms naive.
 * With one workgroup row the x addresses are workgroup-uniform (scalar loads + broadcast on CPU
 * drivers); only the weight loads differ per lane, and each feeds TM = 8 rows.
 */
export const DEFAULT_TILE: TileConfig = { tm: 8, tn: 4, wgm: 1, wgn: 32 };

export interface LinearOptions {
  act?: Activation;
  /** Kernel selection; 'auto' (default) = gemv for M <= 4, tiled otherwise. */
  variant?: GemmVariant;
  /**
   * Write into this tensor instead of a new one (must start on the device's binding alignment; f32, or
   * f16 on the subgroup-matrix plan): [..., N], or with `outCol` [..., D ≥ outCol + N] whose columns
   * [outCol, outCol + N) receive the result (a GEMM writing its part of a concatenation in place: row stride D).
   */
  out?: Tensor;
  outCol?: number;
  /** Storage of a new output (default: the activation policy's, ops/act-dtype.ts); f16 needs the subgroup-matrix plan. */
  dtype?: 'f32' | 'f16';
  /** Override the tile geometry (benchmarks). */
  tile?: TileConfig;
}

const WEIGHT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

export function linear(x: Tensor, w: Tensor, b?: Tensor, opts: LinearOptions = {}): Tensor {
  const g = x.gpu;
  if (x.dtype !== 'f32' && x.dtype !== 'f16') fail(`linear: x must be f32 or f16, got ${x.dtype} ${fmtShape(x.shape)}`);
  if (x.rank < 1) fail(`linear: x must have a feature dimension, got ${fmtShape(x.shape)}`);
  if (w.rank !== 2) fail(`linear: w must be [N, K], got ${fmtShape(w.shape)}`);
  if (!WEIGHT_DTYPES.includes(w.dtype)) fail(`linear: w dtype ${w.dtype} not supported (f32/f16/bf16)`);
  const [N, K] = w.shape;
  if (x.dim(-1) !== K) fail(`linear: x ${fmtShape(x.shape)} last dim must equal w ${fmtShape(w.shape)} dim 1 (${K})`);
  if (K === 0) fail(`linear: K = 0 (x ${fmtShape(x.shape)}, w ${fmtShape(w.shape)})`);
  if (b && (b.rank !== 1 || b.shape[0] !== N)) fail(`linear: bias ${fmtShape(b.shape)} must be [${N}] for w ${fmtShape(w.shape)}`);
  if (b && !WEIGHT_DTYPES.includes(b.dtype)) fail(`linear: bias dtype ${b.dtype} not supported (f32/f16/bf16)`);
  const M = x.numel / K;
  const outShape = [...x.shape.slice(0, -1), N];
  const variant = opts.variant ?? 'auto';
  const plan = planGemm(g, { M, N, K, wdt: w.dtype, xdt: x.dtype }, variant);
  // an f16 x where the plan is not the subgroup-matrix GEMM (the register path reads f32) is widened
  if (x.dtype === 'f16' && plan?.kind !== 'subgroup-matrix') return withWidened([x], ([x2]) => linear(x2, w, b, opts));
  let out = opts.out;
  const col = opts.outCol ?? 0;
  // per-batch vectors (M <= 4: modulation, timestep embeddings) stay f32: nothing to save, and their consumers read f32
  const odt = out?.dtype ?? opts.dtype ?? outputDtype(g, plan?.kind === 'subgroup-matrix' && M > 4);
  if ((x.dtype === 'f16' || odt === 'f16') && plan?.kind !== 'subgroup-matrix')
    fail(`linear: f16 x / output storage needs the subgroup-matrix GEMM (x ${x.dtype}${fmtShape(x.shape)}, out ${odt}, variant ${variant})`);
  if (out) checkOut('linear', out, outShape, M, N, col);
  else out = g.empty(outShape, odt, 'linear');
  const ldo = out.dim(-1);
  if (M === 0 || N === 0) return out;

  const entry = plan ? 'main' : variant === 'auto' ? (M <= 4 ? 'gemv' : 'tiled') : variant;
  if (entry === 'gemv' && M > 4) fail(`linear: variant 'gemv' needs M <= 4, x is ${fmtShape(x.shape)}`);
  const tile = opts.tile ?? DEFAULT_TILE;
  const defines: Record<string, string | number | boolean> = {
    WDT: w.dtype,
    WLAYOUT: 'nk',
    ACT: opts.act ?? 'none',
    ALIGNED: K % 4 === 0,
    HAS_BIAS: !!b,
    EPILOGUE: b || opts.act ? 1 : 0,
  };
  if (b) defines.BDT = b.dtype;
  if (entry === 'tiled') Object.assign(defines, { TM: tile.tm, TN: tile.tn, WGM: tile.wgm, WGN: tile.wgn });
  if (plan) {
    // gemm-sgmat / gemm-wg read scalars whatever the alignment and fuse the epilogue themselves.
    for (const k of ['WLAYOUT', 'ALIGNED', 'EPILOGUE']) delete defines[k];
    Object.assign(defines, plan.defines);
    if (x.dtype === 'f16') defines.X16 = true;
    if (odt === 'f16') defines.O16 = true;
  }

  const limit = g.maxBindingBytes;
  const ob = DTYPE_BYTES[odt];
  const tooBig = (what: string) =>
    fail(`linear: one ${what} of x ${fmtShape(x.shape)} / w ${w.dtype}${fmtShape(w.shape)} does not fit the binding limit ${limit} bytes`);
  for (let n0 = 0; n0 < N; ) {
    // Weight rows [n0, n0 + nc) and bias entries in one binding each; one output row of the block
    // (plus alignment slop) must fit too, or no token chunk could.
    const nc = largestFitting(N - n0, limit, (c) => Math.max(windowBytes(w, n0 * K, c * K), b ? windowBytes(b, n0, c) : 0, c * ob + g.storageAlign));
    if (nc === 0) tooBig('weight row');
    for (let m0 = 0; m0 < M; ) {
      // Tokens [m0, m0 + mc): x rows and the matching rows of this column block of the output.
      const mc = largestFitting(M - m0, limit, (c) => Math.max(windowBytes(x, m0 * K, c * K), windowBytes(out!, m0 * ldo + col + n0, (c - 1) * ldo + nc)));
      if (mc === 0) tooBig('activation row');
      dispatchChunk(g, entry, defines, tile, { x, w, b, out, m0, mc, n0: col + n0, wn0: n0, nc, K, N: ldo }, plan);
      m0 += mc;
    }
    n0 += nc;
  }
  return out;
}

/** Rows [m0, m0 + mc) × weight rows [wn0, wn0 + nc) → out columns [n0, n0 + nc) of row stride N. */
interface Chunk {
  x: Tensor;
  w: Tensor;
  b?: Tensor;
  out: Tensor;
  m0: number;
  mc: number;
  n0: number;
  wn0: number;
  nc: number;
  K: number;
  N: number;
}

/** An `out` option: f32 or f16, on the binding alignment, M rows of D ≥ col + N columns (D = N when col is 0). */
export function checkOut(op: string, out: Tensor, outShape: number[], M: number, N: number, col: number): void {
  const D = out.rank ? out.dim(-1) : 0;
  const ok = col === 0 ? D === N : Number.isInteger(col) && col > 0 && D >= col + N;
  if ((out.dtype !== 'f32' && out.dtype !== 'f16') || !ok || out.numel !== M * D)
    fail(`${op}: out ${out.dtype}${fmtShape(out.shape)} must be f32/f16 ${col ? `[..., ≥ ${col + N}] with ${M} rows (columns from ${col})` : fmtShape(outShape)}`);
  const align = out.gpu.storageAlign;
  if (out.byteOffset % align !== 0) fail(`${op}: out view must start on a ${align}-byte boundary (byteOffset ${out.byteOffset})`);
}

function dispatchChunk(g: Gpu, entry: string, defines: Kernel['defines'], tile: TileConfig, c: Chunk, plan: GemmPlan | null): void {
  const xs = bindWindow(c.x, c.m0 * c.K, c.mc * c.K);
  const ws = bindWindow(c.w, c.wn0 * c.K, c.nc * c.K);
  const bs = c.b ? bindWindow(c.b, c.wn0, c.nc) : null;
  const os = bindWindow(c.out, c.m0 * c.N + c.n0, (c.mc - 1) * c.N + c.nc);
  let groups: number, tilesN = 0;
  let chunkDefines = defines;
  if (plan?.kind === 'subgroup-matrix') {
    // Vector staging needs whole vectors in every row and vector-aligned starts (bf16/f16: 8 per vec4<u32>);
    // vector stores need the same of the output rows. Both only change how the same values move. With A
    // read from storage (ADIRECT, f16 x whose chunk is 16-byte aligned) only W is staged.
    const direct = c.x.dtype === 'f16' ? sgmatDirect(plan, c.K, xs.off, c.mc) : null;
    const vec = c.K % 8 === 0 && (!!direct || xs.off % 4 === 0) && ws.off % 8 === 0;
    const ovec = c.N % 4 === 0 && c.nc % 4 === 0 && os.off % 4 === 0;
    chunkDefines = { ...defines, ...sgmatBindings(false, !!c.b), ...(vec ? { VEC: true } : {}), ...(ovec ? { OVEC: true } : {}), ...direct };
  }
  if (plan) {
    tilesN = Math.ceil(c.nc / plan.bn);
    groups = tilesN * Math.ceil(c.mc / plan.bm);
  } else if (entry === 'tiled') {
    tilesN = Math.ceil(c.nc / (tile.wgn * tile.tn));
    groups = tilesN * Math.ceil(c.mc / (tile.wgm * tile.tm));
  } else if (entry === 'gemv') groups = Math.ceil(c.nc / 4);
  else groups = Math.ceil((c.mc * c.nc) / 64);
  const [gx, gy] = foldGrid(g, groups);
  const bindings = [xs.view, ws.view, ...(bs ? [bs.view] : []), os.view];
  const extra = plan?.ovf ? [overflowCounter(g)] : [];
  const file = plan ? plan.file : 'gemm.wgsl';
  try {
    g.dispatch({
      file,
      entry,
      defines: chunkDefines,
      uniforms: gemmUniforms(file, {
        M: c.mc, N: c.nc, K: c.K, K4: c.K >> 2, x_off: xs.off, w_off: ws.off, b_off: bs ? bs.off : 0, o_off: os.off,
        ldo: c.N, tiles_n: tilesN, wg_x: gx, group_m: plan?.groupM ?? 1,
      }),
      bindings: [...bindings, ...extra],
      workgroups: [gx, gy],
    });
  } finally {
    for (const t of bindings) t.dispose();
  }
}

/**
 * Plain batched f32 matmul: a [B?, M, K] x b [B?, K, N] -> [B?, M, N]. A 2-D b broadcasts over a's
 * batch. Uses the tiled kernel with the [K, N] weight layout; no splitting (rarely used, small).
 */
/** [K, N] layout: lanes along N read contiguous B elements; a smaller tile keeps the JIT time short. */
const MATMUL_TILE: TileConfig = { tm: 4, tn: 4, wgm: 1, wgn: 32 };

export function matmul(a: Tensor, b: Tensor): Tensor {
  const g = a.gpu;
  if (a.dtype !== 'f32' || b.dtype !== 'f32') fail(`matmul: a and b must be f32, got ${a.dtype} and ${b.dtype}`);
  if (a.rank < 2 || a.rank > 3 || b.rank < 2 || b.rank > 3 || b.rank > a.rank)
    fail(`matmul: expected a [B?, M, K] and b [B?, K, N], got a ${fmtShape(a.shape)} and b ${fmtShape(b.shape)}`);
  const [M, K] = a.shape.slice(-2);
  const [Kb, N] = b.shape.slice(-2);
  const B = a.rank === 3 ? a.shape[0] : 1;
  if (Kb !== K || (b.rank === 3 && b.shape[0] !== B))
    fail(`matmul: a ${fmtShape(a.shape)} and b ${fmtShape(b.shape)} do not match`);
  const out = g.empty(a.rank === 3 ? [B, M, N] : [M, N], 'f32', 'matmul');
  if (out.numel === 0) return out;
  if (K === 0) fail(`matmul: K = 0 (a ${fmtShape(a.shape)}, b ${fmtShape(b.shape)})`);
  if (B > g.maxWorkgroupsPerDim) fail(`matmul: batch ${B} exceeds maxComputeWorkgroupsPerDimension ${g.maxWorkgroupsPerDim}`);
  const t = MATMUL_TILE;
  const tilesN = Math.ceil(N / (t.wgn * t.tn));
  const [gx, gy] = foldGrid(g, tilesN * Math.ceil(M / (t.wgm * t.tm)));
  g.dispatch({
    file: 'gemm.wgsl',
    entry: 'tiled',
    defines: { WDT: 'f32', WLAYOUT: 'kn', ACT: 'none', TM: t.tm, TN: t.tn, WGM: t.wgm, WGN: t.wgn },
    uniforms: GEMM({ M, N, K, K4: K >> 2, x_off: 0, w_off: 0, b_off: 0, o_off: 0, ldo: N, tiles_n: tilesN, wg_x: gx, xbs: M * K, wbs: b.rank === 3 ? K * N : 0, obs: M * N }),
    bindings: [a, b, out],
    workgroups: [gx, gy, B],
  });
  return out;
}

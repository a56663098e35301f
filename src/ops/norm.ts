/**
 * Normalisation and modulation ops (shaders/norm.wgsl).
 *
 * Row ops (layerNorm, rmsNorm, softmax) run one workgroup per row of x viewed as [rows, C]; rows are
 * folded into a 2-D grid (row counts over 65535) and split into binding-aligned chunks when x is
 * larger than the device's binding limit. Elementwise ops (modulate, gatedResidual, swiglu) split the
 * same way along token rows; the [B, C] operands are indexed by the global row, so chunks may cross
 * batch boundaries.
 *
 * f16 activation storage (ops/act-dtype.ts): layerNorm / rmsNorm / layerNormModulate read x stored f16 or
 * f32 and write the policy's dtype (statistics in f32 either way); gatedResidual reads an f16 branch output
 * y and keeps the residual stream f32.
 */
import type { Tensor, DType } from '../runtime/tensor.js';
import { DTYPE_BYTES } from '../runtime/tensor.js';
import { uniformStruct } from '../runtime/uniforms.js';
import type { Defines } from '../runtime/shader-source.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32, sameShape } from './util.js';
import { outputDtype, withWidened } from './act-dtype.js';
import { overflowCounter } from './plan-gemm.js';
import { rowChunks } from './layout.js';

const WIDEN: Record<string, string> = { bf16: 'bf16_at', f16: 'f16_at' };

function lastDim(op: string, x: Tensor): number {
  if (x.rank < 1) fail(`${op}: x must have at least one dimension, got ${fmtShape(x.shape)}`);
  const C = x.shape[x.rank - 1];
  if (C < 1) fail(`${op}: last dimension of x ${fmtShape(x.shape)} must be >= 1`);
  return C;
}

/** Affine parameter: rank-1 [C], f32/bf16/f16. */
function checkParam(op: string, name: string, p: Tensor, C: number, x: Tensor): DType {
  if (p.numel !== C || p.rank !== 1)
    fail(`${op}: ${name} ${fmtShape(p.shape)} must be [${C}] to match x ${fmtShape(x.shape)}`);
  if (p.dtype !== 'f32' && p.dtype !== 'bf16' && p.dtype !== 'f16')
    fail(`${op}: ${name} dtype ${p.dtype} not supported (expected f32/bf16/f16)`);
  return p.dtype;
}

type RowOp = 'layer_norm' | 'rms_norm' | 'softmax';

/** Row ops: rows of C from row0 (the chunk's first row: MOD's batch item is row / L). */
const ROWS = uniformStruct('norm.wgsl', ['rows', 'C', 'wg_x', 'eps:f32', 'L', 'row0'], { ROWS: true });
/** Elementwise ops: n elements of C-wide rows from row0, L rows per batch item. */
const EW = uniformStruct('norm.wgsl', ['n', 'C', 'L', 'row0', 'wg_x'], { EW: true });

/** layerNormModulate's per-batch operands ([B, C] f32) and the tokens per batch row. */
interface Mod {
  shift: Tensor;
  scale: Tensor;
  L: number;
}

function rowOp(op: RowOp, x: Tensor, w: Tensor | undefined, b: Tensor | undefined, eps: number, mod?: Mod): Tensor {
  if (op === 'softmax' || x.dtype !== 'f16') requireF32(op, ['x', x]);
  const C = lastDim(op, x);
  const rows = x.numel / C;
  const g = x.gpu;
  const odt = outputDtype(g, op !== 'softmax');
  const defines: Defines = { ROWS: true, OP: op };
  if (x.dtype === 'f16') Object.assign(defines, { F16: true, X16: true });
  const params: Tensor[] = [];
  if (w) {
    const dt = checkParam(op, 'w', w, C, x);
    Object.assign(defines, { HAS_W: true, W_DT: dt, W_AT: WIDEN[dt] ?? 'none' });
    params.push(w);
  }
  if (b) {
    const dt = checkParam(op, 'b', b, C, x);
    Object.assign(defines, { HAS_B: true, B_DT: dt, B_AT: WIDEN[dt] ?? 'none', B_BINDING: 3 + params.length });
    params.push(b);
  }
  if (mod) Object.assign(defines, { MOD: true, B_SHIFT: 3 + params.length, B_SCALE: 4 + params.length });
  const extra = mod ? [mod.shift, mod.scale] : [];
  if (odt === 'f16') {
    Object.assign(defines, { F16: true, O16: true, B_OVF: 3 + params.length + extra.length });
    extra.push(overflowCounter(g));
  }
  const out = g.empty(x.shape, odt, mod ? 'layer_norm_modulate' : op);
  const x2 = x.reshape([rows, C]);
  const o2 = out.reshape([rows, C]);
  const chunks = rowChunks(op, rows, [C * DTYPE_BYTES[x.dtype], C * DTYPE_BYTES[odt]], g.maxBindingBytes, g.storageAlign);
  for (const [start, count] of chunks) {
    const whole = chunks.length === 1;
    const xs = whole ? x2 : x2.rows(start, count);
    const os = whole ? o2 : o2.rows(start, count);
    const [wx, wy] = grid1d(g, count, 1);
    g.dispatch({
      file: 'norm.wgsl',
      defines,
      uniforms: ROWS({ rows: count, C, wg_x: wx, eps, L: mod?.L ?? 1, row0: start }),
      bindings: [xs, os, ...params, ...extra],
      workgroups: [wx, wy],
    });
    if (!whole) {
      xs.dispose();
      os.dispose();
    }
  }
  x2.dispose();
  o2.dispose();
  return out;
}

/** torch.nn.LayerNorm over the last dim (biased variance); w/b optional (elementwise_affine=False). */
export function layerNorm(x: Tensor, w?: Tensor, b?: Tensor, eps = 1e-6): Tensor {
  return rowOp('layer_norm', x, w, b, eps);
}

/**
 * modulate(layerNorm(x, eps), shift, scale) for x [B, L, C], shift/scale [B, C] or [B, 1, C]: the DiT's
 * pre-attention / pre-MLP norm (FLUX `(1 + scale) * norm(x) + shift`, no affine). `fused` (default: under
 * --precision mixed) runs one kernel that never writes the normalised tensor (x read once, out written
 * once: 2 of the 4 activation-sized passes of the two-kernel form). Otherwise the two kernels run as
 * before, so the f32 path stays bit-identical to layerNorm + modulate.
 */
export function layerNormModulate(x: Tensor, shift: Tensor, scale: Tensor, eps = 1e-6, fused = x.gpu.precision === 'mixed'): Tensor {
  if (shift.dtype === 'f16' || scale.dtype === 'f16') return withWidened([shift, scale], ([s, c]) => layerNormModulate(x, s, c, eps, fused));
  if (!fused && x.dtype === 'f16') return withWidened([x], ([x2]) => layerNormModulate(x2, shift, scale, eps, fused));
  const [L] = checkTokens('layerNormModulate', x, true);
  checkPerBatch('layerNormModulate', 'shift', shift, x);
  checkPerBatch('layerNormModulate', 'scale', scale, x);
  if (fused) return rowOp('layer_norm', x, undefined, undefined, eps, { shift, scale, L });
  const n = layerNorm(x, undefined, undefined, eps);
  const m = modulate(n, shift, scale);
  n.dispose();
  return m;
}

/** x * rsqrt(mean(x²) + eps) * w, in f32 (Qwen2 RMSNorm, FLUX QK-norm). */
export function rmsNorm(x: Tensor, w: Tensor, eps = 1e-6): Tensor {
  return rowOp('rms_norm', x, w, undefined, eps);
}

/** Max-subtracted softmax over the last dim. */
export function softmax(x: Tensor): Tensor {
  if (x.dtype === 'f16') return withWidened([x], ([w]) => softmax(w));
  return rowOp('softmax', x, undefined, undefined, 0);
}

// ---- elementwise modulation ---------------------------------------------------------------------

/** A per-batch vector [B, C] (or [B, 1, C], FLUX's `out[:, None, :]`) matching x [B, L, C]. */
function checkPerBatch(op: string, name: string, v: Tensor, x: Tensor): void {
  requireF32(op, [name, v]);
  const [B, , C] = x.shape;
  const ok = (v.rank === 2 && v.shape[0] === B && v.shape[1] === C) || (v.rank === 3 && v.shape[0] === B && v.shape[1] === 1 && v.shape[2] === C);
  if (!ok) fail(`${op}: ${name} ${fmtShape(v.shape)} must be [${B}, ${C}] to match x ${fmtShape(x.shape)}`);
}

function ew(op: 'modulate' | 'gated' | 'swiglu', x: Tensor, big: Tensor[], small: Tensor[], L: number, C: number, y16 = false): Tensor {
  const g = x.gpu;
  const rows = x.numel / C;
  const out = g.empty(x.shape, 'f32', op);
  const flat = (t: Tensor) => t.reshape([rows, C]);
  const x2 = flat(x), o2 = flat(out), big2 = big.map(flat);
  const chunks = rowChunks(op, rows, [C * 4, ...big.map((t) => C * DTYPE_BYTES[t.dtype])], g.maxBindingBytes, g.storageAlign);
  for (const [start, count] of chunks) {
    const whole = chunks.length === 1;
    const view = (t: Tensor) => (whole ? t : t.rows(start, count));
    const xs = view(x2), os = view(o2), bigs = big2.map(view);
    const n = count * C;
    const [wx, wy] = grid1d(g, n);
    // binding order per OP: see shaders/norm.wgsl header
    const bindings = op === 'modulate' ? [xs, ...small, os] : op === 'gated' ? [xs, small[0], bigs[0], os] : [xs, bigs[0], os];
    g.dispatch({ file: 'norm.wgsl', entry: 'ew', defines: { EW: true, OP: op, ...(y16 ? { F16: true, Y16: true } : {}) }, uniforms: EW({ n, C, L, row0: start, wg_x: wx }), bindings, workgroups: [wx, wy] });
    if (!whole) for (const t of [xs, os, ...bigs]) t.dispose();
  }
  for (const t of [x2, o2, ...big2]) t.dispose();
  return out;
}

function checkTokens(op: string, x: Tensor, f16 = false): [number, number] {
  if (!f16 || x.dtype !== 'f16') requireF32(op, ['x', x]);
  if (x.rank !== 3 || x.shape[2] < 1) fail(`${op}: x must be [B, L, C], got ${fmtShape(x.shape)}`);
  return [x.shape[1], x.shape[2]];
}

/** (1 + scale) * x + shift, with shift/scale [B, C] broadcast over the L tokens of x [B, L, C]. */
export function modulate(x: Tensor, shift: Tensor, scale: Tensor): Tensor {
  if ([x, shift, scale].some((t) => t.dtype === 'f16')) return withWidened([x, shift, scale], ([a, b, c]) => modulate(a, b, c));
  const [L, C] = checkTokens('modulate', x);
  checkPerBatch('modulate', 'shift', shift, x);
  checkPerBatch('modulate', 'scale', scale, x);
  return ew('modulate', x, [], [shift, scale], L, C);
}

/** x + gate * y, gate [B, C] broadcast over tokens; x, y [B, L, C]. */
export function gatedResidual(x: Tensor, gate: Tensor, y: Tensor): Tensor {
  // the residual stream is f32: an f16 stream start (img_in's output) or gate is widened; y may stay f16
  if (x.dtype === 'f16' || gate.dtype === 'f16') return withWidened([x, gate], ([a, b]) => gatedResidual(a, b, y));
  const [L, C] = checkTokens('gatedResidual', x);
  checkPerBatch('gatedResidual', 'gate', gate, x);
  if (y.dtype !== 'f16') requireF32('gatedResidual', ['y', y]);
  sameShape('gatedResidual', x, y, 'x', 'y');
  return ew('gated', x, [y], [gate], L, C, y.dtype === 'f16');
}

/** silu(gate) * up, same shapes (any rank). */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  if (gate.dtype === 'f16' || up.dtype === 'f16') return withWidened([gate, up], ([a, b]) => swiglu(a, b));
  requireF32('swiglu', ['gate', gate], ['up', up]);
  sameShape('swiglu', gate, up, 'gate', 'up');
  // purely elementwise: treat as [numel, 1] so chunks can split anywhere (64-element granularity)
  return ew('swiglu', gate, [up], [], 1, 1);
}

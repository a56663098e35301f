/** Elementwise ops (shaders/elementwise.wgsl): activations, affine scale, broadcast add/sub/mul. */
import type { Tensor } from '../runtime/tensor.js';
import { uniformStruct } from '../runtime/uniforms.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32 } from './util.js';
import { withWidened } from './act-dtype.js';

type Unary = 'silu' | 'gelu_tanh' | 'gelu_erf';

/** n elements, b broadcast with period n_b (BINARY), x * alpha + beta (scale). */
const EW = uniformStruct('elementwise.wgsl', ['n', 'n_b?', 'wg_x', 'alpha:f32', 'beta:f32']);

function unary(op: Unary | 'scale', x0: Tensor, alpha = 1, beta = 0): Tensor {
  // f16 activation storage (ops/act-dtype.ts): these kernels read f32, an f16 operand is widened first
  if (x0.dtype === 'f16') return withWidened([x0], ([x]) => unary(op, x, alpha, beta));
  const x = x0;
  requireF32(op, ['x', x]);
  const out = x.gpu.empty(x.shape, 'f32', op);
  const [wx, wy] = grid1d(x.gpu, x.numel);
  x.gpu.dispatch({
    file: 'elementwise.wgsl',
    defines: { OP: op },
    uniforms: EW({ n: x.numel, n_b: 1, wg_x: wx, alpha, beta }),
    bindings: [x, out],
    workgroups: [wx, wy],
  });
  return out;
}

export const silu = (x: Tensor): Tensor => unary('silu', x);
export const geluTanh = (x: Tensor): Tensor => unary('gelu_tanh', x);
export const geluErf = (x: Tensor): Tensor => unary('gelu_erf', x);
/** `x * alpha + beta` */
export const scale = (x: Tensor, alpha: number, beta = 0): Tensor => unary('scale', x, alpha, beta);

/**
 * `a op b` where b has a's shape or is a trailing block of it (b.numel divides a.numel and b's shape
 * equals a's trailing dims, e.g. a [L, C] + b [C]).
 */
function binary(op: 'add' | 'sub' | 'mul', a: Tensor, b: Tensor): Tensor {
  if (a.dtype === 'f16' || b.dtype === 'f16') return withWidened([a, b], ([a2, b2]) => binary(op, a2, b2));
  requireF32(op, ['a', a], ['b', b]);
  const tail = a.shape.slice(a.rank - b.rank);
  const trailing = b.rank <= a.rank && b.shape.every((d, i) => d === tail[i]);
  if (!trailing || b.numel === 0) fail(`${op}: b ${fmtShape(b.shape)} does not broadcast over a ${fmtShape(a.shape)}`);
  const out = a.gpu.empty(a.shape, 'f32', op);
  const [wx, wy] = grid1d(a.gpu, a.numel);
  a.gpu.dispatch({
    file: 'elementwise.wgsl',
    defines: { OP: op, BINARY: true },
    uniforms: EW({ n: a.numel, n_b: b.numel, wg_x: wx, alpha: 1, beta: 0 }),
    bindings: [a, b, out],
    workgroups: [wx, wy],
  });
  return out;
}

export const add = (a: Tensor, b: Tensor): Tensor => binary('add', a, b);
export const sub = (a: Tensor, b: Tensor): Tensor => binary('sub', a, b);
export const mul = (a: Tensor, b: Tensor): Tensor => binary('mul', a, b);

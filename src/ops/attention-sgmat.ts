/**
 * Dispatch of shaders/attention-sgmat.wgsl (plan: src/ops/plan-attention.ts) for a call of
 * src/ops/attention.ts whose tensors fit one binding each (the split path stays on the register kernel).
 */
import type { Tensor } from '../runtime/tensor.js';
import type { Gpu } from '../runtime/gpu.js';
import { uniformStruct } from '../runtime/uniforms.js';
import type { AttentionPlan } from './plan-attention.js';
import { overflowCounter } from './plan-gemm.js';
import { grid1d } from './util.js';

const ATTENTION_SGMAT = uniformStruct('attention-sgmat.wgsl', [
  'lq', 'lk', 'h', 'hkv', 'n_qt', 'wg_x', 'nb', 'causal', 'scale_log2:f32', '_p0', '_p1', '_p2',
]);

export interface SgmatAttentionArgs {
  q: Tensor; k: Tensor; v: Tensor; out: Tensor;
  B: number; Lq: number; Lk: number; H: number; Hkv: number;
  scale: number; causal: boolean;
  keyMask?: Tensor; mask?: Tensor; segments?: Tensor; queryMask?: Tensor;
}

export function attentionSgmat(g: Gpu, plan: AttentionPlan, a: SgmatAttentionArgs): void {
  const defines: Record<string, number | boolean> = { ...plan.defines };
  // f16 activation storage (ops/act-dtype.ts): q, k, v share one storage dtype; the output has its own.
  if (a.q.dtype === 'f16') defines.QKV16 = true;
  if (a.out.dtype === 'f16') defines.O16 = true;
  const bindings = [a.q, a.k, a.v, a.out, overflowCounter(g)];
  const add = (name: string, t: Tensor | undefined, flag: string): void => {
    if (!t) return;
    bindings.push(t);
    defines[flag] = true;
    defines[name] = bindings.length; // binding numbers start at 1 (0 is the uniform block)
  };
  add('B_KEYMASK', a.keyMask, 'KEYMASK');
  add('B_MASK', a.mask, 'MASK');
  add('B_SEG', a.segments, 'SEG');
  add('B_QMASK', a.queryMask, 'QMASK');
  const nQt = Math.ceil(a.Lq / plan.bq);
  const [wx, wy] = grid1d(g, nQt * a.H * a.B, 1);
  g.dispatch({
    file: 'attention-sgmat.wgsl',
    defines,
    uniforms: ATTENTION_SGMAT({ lq: a.Lq, lk: a.Lk, h: a.H, hkv: a.Hkv, n_qt: nQt, wg_x: wx, nb: a.B, causal: a.causal ? 1 : 0, scale_log2: a.scale * Math.LOG2E }),
    bindings,
    workgroups: [wx, wy],
  });
}

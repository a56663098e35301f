/**
 * f16 activation storage (issue 19 item 1): the storage dtype of the activations an op creates, and the
 * redo of a step whose f16 stores overflowed.
 *
 * Which tensors: GEMM outputs and inputs (q/k/v/o projections, the MLP hidden) on the subgroup-matrix
 * plan, where the f16 operands are staged anyway; the residual streams and norm/softmax statistics stay
 * f32 (FLUX-family residual streams exceed 65504). Where: only inside `withActivations(g, 'f16', …)`, and
 * only on a device that can (`canStoreF16`: --precision mixed on the subgroup-matrix family, which has
 * shader-f16); everywhere else, `--precision f32` and the host lavapipe included, every op keeps f32 and
 * runs the same kernels as before (bit-identical).
 *
 * Overflow: a kernel writing f16 storage clamps a value beyond ±65504 (or inf) and counts it in word 2 of
 * the device's overflow counter (ops/plan-gemm.ts overflowCounter); `withF16Redo` zeroes that word as a
 * step begins, reads it with the step's output (one readback) and, when it is not 0, runs the step again with f32 storage, says so once on stderr and counts it
 * (`f16Redos`). The step must be a pure function of inputs it does not free.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { DType, Tensor } from '../runtime/tensor.js';
import { hasMatrixUnits } from '../runtime/caps.js';
import { overflowCounter } from './plan-gemm.js';
import { cast } from './layout.js';
import { f16ArrayToF32 } from '../runtime/half.js';

export type ActDtype = 'f32' | 'f16';


/** Whether g may store activations in f16: mixed precision on the subgroup-matrix family (shader-f16 there). */
export function canStoreF16(g: Gpu): boolean {
  return g.precision === 'mixed' && g.kernels === 'subgroup-matrix' && hasMatrixUnits(g.caps) && g.hasFeature('shader-f16');
}

/** The storage dtype of the activations ops create on g now: f32 outside `withActivations(g, 'f16', …)`. */
export function activationDtype(g: Gpu): ActDtype {
  return g.activations;
}

/** The storage of an op's new output: f16 only where the policy stores activations in f16 and the kernel can write it. */
export function outputDtype(g: Gpu, kernelWritesF16: boolean): DType {
  return kernelWritesF16 && activationDtype(g) === 'f16' ? 'f16' : 'f32';
}

/**
 * An f32 operand for a kernel that reads f32 only: t itself, or a widened copy of an f16 t (the caller
 * disposes it when it is not t). Small per-batch vectors and rare mixes take this path, not the main tensors.
 */
export function widen(t: Tensor): Tensor {
  return t.dtype === 'f16' ? cast(t, 'f32') : t;
}

/** Run `f` on the operands widened where f16, freeing the copies afterwards. */
export function withWidened<T>(ts: Tensor[], f: (w: Tensor[]) => T): T {
  const w = ts.map(widen);
  try {
    return f(w);
  } finally {
    w.forEach((t, i) => t !== ts[i] && t.dispose());
  }
}

/** Run f with activations stored as `dt` (f16 falls back to f32 where the device cannot); restores the previous setting. */
export function withActivations<T>(g: Gpu, dt: ActDtype, f: () => T): T {
  const saved = g.activations;
  g.activations = dt === 'f16' && canStoreF16(g) ? 'f16' : 'f32';
  const restore = () => void (g.activations = saved);
  let r: T;
  try {
    r = f();
  } catch (e) {
    restore();
    throw e;
  }
  if (r instanceof Promise) return r.finally(restore) as T;
  restore();
  return r;
}

/** Values clamped while written to f16 storage since the last `withF16Redo` step began (waits for queued work). */
export async function f16Overflows(g: Gpu): Promise<number> {
  return (await g.read(overflowCounter(g)))[2];
}

/** Steps redone with f32 storage on g. */
export function f16Redos(g: Gpu): number {
  return g.f16Redos;
}

/**
 * One step's output [..] read to the host as f32 together with overflow word 2, in one submit and one
 * wait (the sampler's one readback per step): both are copied into one u32 tensor.
 */
async function readWithOverflows(g: Gpu, y: Tensor): Promise<[Float32Array, number]> {
  const words = y.byteLength / 4;
  const both = g.empty([words + 4], 'u32', 'step readback');
  try {
    g.copyInto(y, both);
    g.copyInto(overflowCounter(g), both, words * 4);
    const r = (await g.read(both)) as Uint32Array;
    const host = y.dtype === 'f16' ? f16ArrayToF32(new Uint16Array(r.buffer, r.byteOffset, y.numel)) : new Float32Array(r.buffer, r.byteOffset, y.numel).slice();
    return [host, r[words + 2]];
  } finally {
    both.dispose();
  }
}

/**
 * One step, `step()` giving its output tensor (f32 or f16, freed here), read to the host as f32: with f16
 * activation storage where g can; when any f16 store of the step overflowed (word 2 of the overflow
 * counter, zeroed as the step begins and read with the output), the step runs again with f32 storage.
 * `what` names the step on stderr. The step must be a pure function of inputs it does not free.
 */
export async function withF16Redo(g: Gpu, what: string, step: () => Promise<Tensor>): Promise<Float32Array> {
  const run = (dt: ActDtype) => g.scopeAsync(async () => readWithOverflows(g, await withActivations(g, dt, step)));
  if (!canStoreF16(g)) return (await run('f32'))[0];
  g.writeBytes(overflowCounter(g), 8, new Uint8Array(4));
  const [host, over] = await run('f16');
  if (over === 0) return host;
  g.f16Redos++;
  if (!g.saidOnce.has('f16 redo')) {
    g.saidOnce.add('f16 redo');
    process.stderr.write(`step1x: note: ${what}: ${over} value(s) beyond the f16 range in f16 activation storage; redone with f32 storage (said once)\n`);
  }
  return (await run('f32'))[0];
}

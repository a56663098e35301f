/**
 * Sequential lifetimes by scope (runtime/scope.ts), for forward code that reads like torch's
 * `h = f1(x); h = f2(h); …` and frees each value as soon as the next one exists — the peak of a chain is
 * then one step's input, what the step makes on the way and its output, as if freed by hand:
 *
 *   chain(g, () => norm1(x), (h) => conv1(h), (h) => norm2(h), (h) => conv2(h, { residual: x }))
 *
 * Step i runs in a scope nested inside the scope of step i + 1, so its result moves up into step i + 1's
 * scope, where it is disposed as soon as step i + 1 returns; everything a step makes and does not return
 * is disposed when it returns. The first step takes no value (what it closes over, such as `x` above,
 * stays its owner's). A step may return several tensors (arrays or plain objects of them, as scope()
 * results): `(x) => [q(x), k(x), v(x)]`, then `([q, k, v]) => attention(q, k, v)`. The final result moves to
 * the scope that called chain (or to the caller when none is open).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { tensorsIn } from '../runtime/scope.js';

type Step<A, B> = (a: A) => B;

export function chain<A>(g: Gpu, f0: () => A): A;
export function chain<A, B>(g: Gpu, f0: () => A, f1: Step<A, B>): B;
export function chain<A, B, C>(g: Gpu, f0: () => A, f1: Step<A, B>, f2: Step<B, C>): C;
export function chain<A, B, C, D>(g: Gpu, f0: () => A, f1: Step<A, B>, f2: Step<B, C>, f3: Step<C, D>): D;
export function chain<A, B, C, D, E>(g: Gpu, f0: () => A, f1: Step<A, B>, f2: Step<B, C>, f3: Step<C, D>, f4: Step<D, E>): E;
export function chain<A, B, C, D, E, F>(g: Gpu, f0: () => A, f1: Step<A, B>, f2: Step<B, C>, f3: Step<C, D>, f4: Step<D, E>, f5: Step<E, F>): F;
export function chain(g: Gpu, f0: () => unknown, ...steps: Step<unknown, unknown>[]): unknown {
  const run = (i: number): unknown => g.scope(() => (i < 0 ? f0() : steps[i](run(i - 1))));
  return run(steps.length - 1);
}

/**
 * The one runner of a layer chain (the DiT's blocks through BlockStream.scan, the VAE's encoder and
 * decoder steps, Qwen's vision blocks and text layers, a generated token's pass): `first()`, then each
 * step on the previous result, JAX `lax.scan`'s carry. Each step runs in its own tensor scope; the carry
 * it replaces is freed as soon as the next exists (tensors passed through, and those in `keep`, stay; a
 * first carry made by the caller is freed early too, unless kept). Backpressure before every step (at most
 * g.maxInFlight submits ahead of the GPU, runtime/gpu-encode.ts pace) and a submit after it once the
 * queued work is large enough (g.flushIfDue: ≥ 1 GiB bound, ≥ 128 commands, or freed buffers waiting to
 * be destroyed), so the GPU runs step i while the host records step i + 1 (or reads the next streamed
 * block) and Dawn's deferred frees of step i - 2 complete: without it a chain records whole stages into
 * one submit. A real-size DiT block is one submit; a generated token's layers (M = 1) share them: 10
 * submits a token on the h100 dry run instead of 29 (one per layer + the logits' readback).
 * A carry is what a scope may return: a Tensor, or arrays / plain objects of them.
 */
export async function scan<C>(g: Gpu, first: () => C | Promise<C>, steps: readonly ((carry: C, i: number) => C | Promise<C>)[], opts: { keep?: readonly Tensor[] } = {}): Promise<C> {
  return g.scopeAsync(async () => {
    let carry = await g.scopeAsync(async () => first());
    for (let i = 0; i < steps.length; i++) {
      await g.pace();
      const prev = carry;
      carry = await g.scopeAsync(async () => steps[i](prev, i));
      const live = tensorsIn(carry);
      for (const t of tensorsIn(prev)) if (!live.has(t) && !opts.keep?.includes(t)) t.dispose();
      g.flushIfDue();
    }
    return carry;
  });
}

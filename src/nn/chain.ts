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
 * `chain` over a list of steps of one type that may await (taps, blocks streamed in): `first()`, then
 * each step on the previous result. Scopes nest as in `chain`, so no other scope may be opened and left
 * open across one of these awaits (runtime/scope.ts).
 */
export function chainAsync<T>(g: Gpu, first: () => T | Promise<T>, steps: readonly Step<T, T | Promise<T>>[]): Promise<T> {
  const run = (i: number): Promise<T> => g.scopeAsync(async () => (i < 0 ? first() : steps[i](await run(i - 1))));
  return run(steps.length - 1);
}

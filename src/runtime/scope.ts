/**
 * Scoped tensor lifetimes (TF.js `tidy`): every Tensor made while a scope is open (new buffers and
 * views alike) belongs to that scope and is disposed when the scope closes, unless it is part of
 * the scope's result (a Tensor, or arrays / plain objects / Maps of them, walked 4 levels deep), in
 * which case it moves to the enclosing scope. Forward code then reads like the reference:
 *
 *   forward(x) { return this.g.scope(() => this.linear2.forward(concat([attn(x), act(x)], 2))); }
 *
 * Rules that keep it sound:
 * - Tensors made outside any scope (weights, caches, the sampler's state) are never tracked;
 *   `untracked(fn)` runs fn so that its creations are not tracked (weights streamed in mid-forward,
 *   caches that outlive the call), and `keep(t)` takes one tensor out of its scope. An async fn stays
 *   untracked across its awaits while the code around it goes on tracking (an AsyncLocalStorage
 *   context, not a frame): a block read ahead in the background while a forward's scopes open and
 *   close is never claimed by one of them.
 * - Scopes nest strictly. An async scope (`scopeAsync`) may await, but no other scope of the same
 *   runtime may open and stay open across its end: that would interleave lifetimes, so it fails.
 * - A tensor disposed by hand inside a scope is simply skipped when the scope closes.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { fail } from '../errors.js';
import { Tensor } from './tensor.js';

type Frame = Set<Tensor>;

export class ScopeStack {
  private readonly frames: Frame[] = [];
  /** true inside `untracked(fn)` and every async continuation of it; false again inside a scope opened there. */
  private readonly free = new AsyncLocalStorage<boolean>();

  /** Tensor's constructor calls this for every tensor made on the runtime. */
  track(t: Tensor): void {
    if (this.free.getStore()) return;
    this.frames[this.frames.length - 1]?.add(t);
  }

  get depth(): number {
    return this.frames.length;
  }

  run<T>(fn: () => T): T {
    const frame = this.open(new Set());
    let result: T;
    try {
      result = this.free.run(false, fn);
    } catch (e) {
      this.close(frame, undefined);
      throw e;
    }
    if (result instanceof Promise) {
      this.close(frame, undefined);
      fail('scope(): the function returned a Promise; use scopeAsync() for async work');
    }
    this.close(frame, result);
    return result;
  }

  async runAsync<T>(fn: () => Promise<T>): Promise<T> {
    const frame = this.open(new Set());
    let result: T;
    try {
      result = await this.free.run(false, fn);
    } catch (e) {
      this.close(frame, undefined);
      throw e;
    }
    this.close(frame, result);
    return result;
  }

  untracked<T>(fn: () => T): T {
    return this.free.run(true, fn);
  }

  /** Take tensors out of whatever scope holds them: the caller now owns them. */
  keep<T extends Tensor | undefined>(t: T): T {
    if (t) for (const f of this.frames) f.delete(t);
    return t;
  }

  private open(frame: Frame): Frame {
    this.frames.push(frame);
    return frame;
  }

  private pop(frame: Frame): void {
    const top = this.frames.pop();
    if (top !== frame) fail('tensor scopes interleaved: an async scope closed while another one was open');
  }

  private close(frame: Frame, result: unknown): void {
    this.pop(frame);
    const survivors = new Set<Tensor>();
    collect(result, survivors, 0);
    const parent = this.frames[this.frames.length - 1];
    for (const t of frame) {
      if (survivors.has(t)) parent?.add(t);
      else t.dispose();
    }
  }
}

/** The tensors a scope result holds (a Tensor, or arrays / plain objects / Maps of them, 4 levels deep). */
export function tensorsIn(v: unknown): Set<Tensor> {
  const out = new Set<Tensor>();
  collect(v, out, 0);
  return out;
}

function collect(v: unknown, out: Set<Tensor>, depth: number): void {
  if (v === null || typeof v !== 'object' || depth > 4) return;
  if (v instanceof Tensor) {
    out.add(v);
    return;
  }
  if (Array.isArray(v)) for (const x of v) collect(x, out, depth + 1);
  else if (v instanceof Map) for (const x of v.values()) collect(x, out, depth + 1);
  else if (Object.getPrototypeOf(v) === Object.prototype) for (const x of Object.values(v)) collect(x, out, depth + 1);
}

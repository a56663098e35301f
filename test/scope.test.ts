/**
 * Scoped tensor lifetimes (src/runtime/scope.ts) on the real device: what a scope disposes, what
 * survives (results, nested results, kept and untracked tensors), async scopes, and the errors for
 * misuse. The pool's live-buffer count shows that storage is really released.
 */
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const mk = (g: Gpu, n = 4): Tensor => g.upload(new Float32Array(n).fill(1), [n]);

describe('tensor scopes', () => {
  test('intermediates and views are disposed, the result survives and moves to the parent', async () => {
    const g = await getGpu();
    const outer = mk(g);
    let inner: Tensor[] = [];
    const r = g.scope(() => {
      const a = mk(g), b = mk(g), v = a.reshape([2, 2]);
      inner = [a, b, v];
      return g.scope(() => {
        const c = mk(g);
        inner.push(c);
        return { c, pair: [b] };
      });
    });
    expect(inner.map((t) => t.isDisposed)).toEqual([true, false, true, false]);
    expect(r.c.isDisposed).toBe(false);
    expect(r.pair[0].isDisposed).toBe(false);
    expect(outer.isDisposed).toBe(false); // made outside every scope
    // A result handed up to a parent is disposed by the parent unless the parent returns it too.
    let c2: Tensor | undefined;
    g.scope(() => {
      c2 = g.scope(() => mk(g));
    });
    expect(c2!.isDisposed).toBe(true);
    [outer, r.c, r.pair[0]].forEach((t) => t.dispose());
  });

  test('keep() and untracked() take tensors out; a throw still disposes; hand-disposed are skipped', async () => {
    const g = await getGpu();
    let kept: Tensor | undefined, free: Tensor | undefined, early: Tensor | undefined, lost: Tensor | undefined;
    g.scope(() => {
      kept = g.keep(mk(g));
      free = g.untracked(() => mk(g));
      early = mk(g);
      early.dispose();
    });
    expect(kept!.isDisposed).toBe(false);
    expect(free!.isDisposed).toBe(false);
    expect(() =>
      g.scope(() => {
        lost = mk(g);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(lost!.isDisposed).toBe(true);
    kept!.dispose();
    free!.dispose();
  });

  test('async scopes await work; a Promise from scope() and interleaved async scopes are refused', async () => {
    const g = await getGpu();
    let mid: Tensor | undefined;
    const out = await g.scopeAsync(async () => {
      mid = mk(g);
      await new Promise((r) => setTimeout(r, 5));
      const w = await g.untracked(async () => mk(g)); // a weight streamed in mid-forward
      return [mk(g), w];
    });
    expect(mid!.isDisposed).toBe(true);
    expect(out.map((t) => t.isDisposed)).toEqual([false, false]);
    out.forEach((t) => t.dispose());
    expect(() => g.scope(() => Promise.resolve(1) as unknown as number)).toThrow(/scopeAsync/);
    let release: () => void = () => {};
    const a = g.scopeAsync(() => new Promise<void>((r) => (release = r)));
    const b = g.scopeAsync(async () => {
      release();
      await new Promise((r) => setTimeout(r, 5));
    });
    await expect(a).rejects.toThrow(/interleaved/);
    await b.catch(() => {});
    expect(g.scopes.depth).toBe(0);
  });

  test('an untracked async loader stays untracked across its awaits while scopes around it open and close', async () => {
    const g = await getGpu();
    let go: () => void = () => {};
    const started = new Promise<void>((r) => (go = r));
    // a block read ahead in the background (nn/block-stream.ts): its tensors appear after awaits,
    // while the forward's scope is the innermost one
    const readAhead = g.untracked(async () => {
      const first = mk(g);
      await started;
      return [first, mk(g)];
    });
    let mid: Tensor | undefined, inner: Tensor | undefined;
    let weights: Tensor[] = [];
    const out = await g.scopeAsync(async () => {
      mid = mk(g);
      go();
      weights = await readAhead;
      return mk(g);
    });
    expect(mid!.isDisposed).toBe(true); // the forward still tracks while the loader is pending
    expect(weights.map((t) => t.isDisposed)).toEqual([false, false]);
    // a scope opened inside an untracked window tracks its own creations again
    const kept = g.untracked(() => g.scope(() => ((inner = mk(g)), mk(g))));
    expect(inner!.isDisposed).toBe(true);
    expect(kept.isDisposed).toBe(false);
    [out, kept, ...weights].forEach((t) => t.dispose());
    expect(g.scopes.depth).toBe(0);
  });

  test('storage is returned to the pool', async () => {
    const g = await getGpu();
    const before = g.pool.liveBytes;
    g.scope(() => {
      for (let i = 0; i < 10; i++) mk(g, 1024 + i);
    });
    expect(g.pool.liveBytes).toBe(before);
  });
});

/**
 * nn/chain.ts on the device: a chain of steps frees each value as soon as the next one exists (the
 * peak of freeing by hand), leaves its input to the caller, passes tensors through steps, and the
 * async form does the same across awaits. The pool's live bytes show the storage really goes.
 */
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { chain, scan } from '../src/nn/chain.js';
import { add } from '../src/ops/elementwise.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const N = 4096; // floats: 16 KiB per tensor
const mk = (g: Gpu): Tensor => g.upload(new Float32Array(N).fill(1), [N]);
const add1 = (g: Gpu, x: Tensor): Tensor => add(x, g.upload(new Float32Array(N).fill(1), [N]));

describe('chain', () => {
  test('each value is freed once the next exists; the input stays; what a step does not return goes with it', async () => {
    const g = await getGpu();
    const x = mk(g);
    const made: Tensor[] = [];
    const scratch: Tensor[] = [];
    const live: number[] = [];
    const base = g.pool.liveBytes;
    // every step makes a scratch tensor it drops and a result; checks what is alive when it runs
    const step = (h: Tensor): Tensor => {
      live.push(g.pool.liveBytes - base);
      expect(h.isDisposed).toBe(false);
      made.slice(0, -1).forEach((t) => expect(t.isDisposed).toBe(true)); // all but the step's input are gone
      scratch.forEach((t) => expect(t.isDisposed).toBe(true));
      scratch.push(mk(g));
      const y = mk(g);
      made.push(y);
      return y;
    };
    const out = chain(g, () => step(x), step, step, step, step);
    expect(x.isDisposed).toBe(false);
    expect(out.isDisposed).toBe(false);
    expect(made.filter((t) => t.isDisposed).length).toBe(4);
    expect(scratch.every((t) => t.isDisposed)).toBe(true);
    // when a step starts only its input (and the chain's own input) is alive: one tensor past the first
    expect(live).toEqual([0, 1, 1, 1, 1].map((k) => k * N * 4));
    expect(g.pool.liveBytes - base).toBe(N * 4);
    out.dispose();
    x.dispose();
  });

  test('several tensors per step: one passed through survives, the others go after the next step', async () => {
    const g = await getGpu();
    let first: Tensor[] = [];
    const [a, b] = chain(g,
      () => (first = [mk(g), mk(g)]),
      ([p, q]) => [p, q.reshape([N / 2, 2])], // p passes through, only a view of q goes on
      ([p, v]) => [p, v]);
    expect(a).toBe(first[0]);
    expect(a.isDisposed).toBe(false);
    expect(first[1].isDisposed).toBe(true); // its storage lives on in the view
    expect(b.shape).toEqual([N / 2, 2]);
    expect(await g.readF32(b)).toEqual(new Float32Array(N).fill(1));
    [a, b].forEach((t) => t.dispose());
  });

  test('scan awaits between steps with the same lifetimes', async () => {
    const g = await getGpu();
    const made: Tensor[] = [];
    const step = async (h?: Tensor): Promise<Tensor> => {
      await new Promise((r) => setTimeout(r, 2));
      made.slice(0, -1).forEach((t) => expect(t.isDisposed).toBe(true));
      if (h) expect(h.isDisposed).toBe(false);
      const y = mk(g);
      made.push(y);
      return y;
    };
    const base = g.pool.liveBytes;
    const out = await scan(g, () => step(), [step, step, step]);
    expect(made.slice(0, -1).every((t) => t.isDisposed)).toBe(true);
    expect(g.pool.liveBytes - base).toBe(N * 4);
    expect(g.scopes.depth).toBe(0);
    out.dispose();
  });

  test('scan paces before every step and submits once the queued work is due (bytes, commands, deferred frees)', async () => {
    const g = await getGpu();
    const calls: string[] = [];
    const pace = g.pace.bind(g), flush = g.flush.bind(g);
    const { submitBytes, submitCommands } = g, cap = g.pool.maxCachedBytes;
    g.pace = async () => { calls.push('pace'); await pace(); };
    g.flush = () => { calls.push('flush'); flush(); };
    const one = mk(g); // no upload inside the steps: a host write submits the work before it
    const step = (h: Tensor, i: number): Tensor => {
      calls.push(`step${i}`);
      return add(h, one);
    };
    const run = async (): Promise<string[]> => {
      g.flush(); // start from an empty batch
      calls.length = 0;
      const out = await scan(g, () => mk(g), [step, step, step]);
      const seen = [...calls];
      expect(await g.readF32(out)).toEqual(new Float32Array(N).fill(4));
      out.dispose();
      return seen;
    };
    try {
      // tiny steps: one submit for the whole chain, at the readback
      expect(await run()).toEqual(['pace', 'step0', 'pace', 'step1', 'pace', 'step2']);
      // each add binds x, y and out (3 · 16 KiB): due after every second step
      g.submitBytes = 2 * 3 * N * 4;
      expect(await run()).toEqual(['pace', 'step0', 'pace', 'step1', 'flush', 'pace', 'step2']);
      g.submitBytes = submitBytes;
      g.submitCommands = 1;
      expect(await run()).toEqual(['pace', 'step0', 'flush', 'pace', 'step1', 'flush', 'pace', 'step2', 'flush']);
      g.submitCommands = submitCommands;
      // a replaced carry that the pool destroys instead of caching: submitted at once, as its memory waits for it
      g.pool.maxCachedBytes = 0;
      expect(await run()).toEqual(['pace', 'step0', 'flush', 'pace', 'step1', 'flush', 'pace', 'step2', 'flush']);
    } finally {
      Object.assign(g, { pace, flush, submitBytes, submitCommands });
      g.pool.maxCachedBytes = cap;
      one.dispose();
    }
  });

  test('scan frees a replaced carry the caller made, except what `keep` names; passed-through tensors stay', async () => {
    const g = await getGpu();
    const [a, b, c] = [mk(g), mk(g), mk(g)];
    const base = g.pool.liveBytes;
    const out = await scan(g, () => [a, b, c], [([x, y, z]) => [add1(g, x), y, z], ([x, , z]) => [x, z]], { keep: [c] });
    expect(a.isDisposed).toBe(true); // replaced after step 0
    expect(b.isDisposed).toBe(true); // dropped by step 1
    expect(c.isDisposed).toBe(false);
    expect(out[1]).toBe(c);
    expect(g.pool.liveBytes - base).toBe(-N * 4); // a and b gone, one new tensor
    out[0].dispose();
    c.dispose();
    expect(g.scopes.depth).toBe(0);
  });

  test('a throwing step frees what the chain made', async () => {
    const g = await getGpu();
    const base = g.pool.liveBytes;
    expect(() => chain(g, () => mk(g), () => {
      mk(g);
      throw new Error('boom');
    })).toThrow('boom');
    expect(g.pool.liveBytes).toBe(base);
    expect(g.scopes.depth).toBe(0);
  });
});

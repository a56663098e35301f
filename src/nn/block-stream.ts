/**
 * The one block-streaming engine of the DiT and Qwen2.5-VL: a stack of `count` blocks of which those
 * with `isResident(i)` are loaded once (`preload`) and kept, and the others are read from the checkpoint
 * when needed. `get(i)` returns block i (a streamed one loaded on demand, with the next streamed block
 * already being read: one block of read-ahead), `release(i, b)` frees a streamed block once its work is
 * recorded (the buffer pool hands memory back only to later dispatches, which WebGPU orders after it).
 * Which blocks are resident is the caller's residency plan (models/dit-config.ts planResidency for the DiT,
 * models/qwen25vl/loader.ts residencyPlan for Qwen, both counted by nn/weight.ts gpuTensorBytes).
 * `scan` runs a forward pass over all blocks with their lifetimes handled here, not in the model, on the
 * layer-chain runner the VAE and Qwen use too (nn/chain.ts scan: a tensor scope per block, the carried
 * residual streams replaced, backpressure); `stream` runs one block and frees it if streamed.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { fail } from '../errors.js';
import { scan } from './chain.js';

export class BlockStream<T extends { dispose(): void }> {
  private readonly held = new Map<number, T>();
  private readonly pending = new Map<number, Promise<T>>();
  private preloaded = false;

  constructor(
    readonly count: number,
    private readonly loader: (i: number) => Promise<T>,
    private readonly isResident: (i: number) => boolean,
  ) {}

  /** Number of blocks read from the checkpoint on every pass. */
  get streamedCount(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (!this.isResident(i)) n++;
    return n;
  }

  /** Load every resident block now (on a failure part-way, what was loaded is freed). */
  async preload(): Promise<void> {
    if (this.preloaded) return;
    try {
      for (let i = 0; i < this.count; i++) if (this.isResident(i) && !this.held.has(i)) this.held.set(i, await this.loader(i));
    } catch (e) {
      for (const b of this.held.values()) b.dispose();
      this.held.clear();
      throw e;
    }
    this.preloaded = true;
  }

  /** Block i if it is resident (and preloaded), else undefined. */
  residentAt(i: number): T | undefined {
    return this.held.get(i);
  }

  private fetch(i: number): void {
    const p = this.loader(i);
    p.catch(() => undefined); // surfaced when awaited
    this.pending.set(i, p);
  }

  async get(i: number): Promise<T> {
    if (i < 0 || i >= this.count) fail(`BlockStream.get(${i}): only ${this.count} blocks`);
    if (this.isResident(i)) {
      if (!this.preloaded) await this.preload();
      return this.held.get(i)!;
    }
    if (!this.pending.has(i)) this.fetch(i);
    const p = this.pending.get(i)!;
    this.pending.delete(i);
    for (let k = i + 1; k < this.count; k++)
      if (!this.isResident(k)) {
        if (!this.pending.has(k)) this.fetch(k);
        break;
      }
    return p;
  }

  /**
   * One pass over every block on the layer-chain runner (nn/chain.ts scan: a scope per block, the replaced
   * carry freed once the next exists except `keep`, backpressure before each block and a submit after it once
   * the queued work is due (a real-size block always is),
   * so the GPU runs block i while block i + 1 is read). `step(block, i, carry)` returns the next carry; a
   * streamed block is freed once its step has returned (its commands are recorded, queue order protects
   * the reuse of its memory).
   */
  async scan<C extends Tensor[]>(g: Gpu, init: C, step: (block: T, i: number, carry: C) => Promise<C>, opts: { keep?: readonly Tensor[] } = {}): Promise<C> {
    try {
      return await scan(g, () => init, Array.from({ length: this.count }, (_, i) => (carry: C) => this.stream(i, (block) => step(block, i, carry))), opts);
    } catch (e) {
      this.abandon();
      throw e;
    }
  }

  /** A streamed block kept loaded for the next stream() of the same index (`again`). */
  private kept: { i: number; b: T } | undefined;

  /**
   * Block i through fn: a streamed block is freed once fn has returned (its work is recorded by then),
   * or with `again` kept for the next stream(i) (Qwen's layer-major passes over several sequences). The
   * block's lifetime is handled here, so forward code frees nothing by hand.
   */
  async stream<R>(i: number, fn: (block: T) => R | Promise<R>, opts: { again?: boolean } = {}): Promise<R> {
    const k = this.kept;
    this.kept = undefined;
    if (k && k.i !== i) this.release(k.i, k.b);
    const b = k?.i === i ? k.b : await this.get(i);
    let again = false;
    try {
      const r = await fn(b);
      again = !!opts.again;
      return r;
    } finally {
      if (again) this.kept = { i, b };
      else this.release(i, b);
    }
  }

  release(i: number, block: T): void {
    if (!this.isResident(i)) block.dispose();
  }

  /** Drop read-ahead blocks (after a failed pass). */
  abandon(): void {
    for (const p of this.pending.values()) p.then((b) => b.dispose(), () => undefined);
    this.pending.clear();
  }

  async dispose(): Promise<void> {
    if (this.kept) this.release(this.kept.i, this.kept.b);
    this.kept = undefined;
    for (const b of this.held.values()) b.dispose();
    this.held.clear();
    this.preloaded = false;
    for (const p of this.pending.values()) (await p.catch(() => null))?.dispose();
    this.pending.clear();
  }
}

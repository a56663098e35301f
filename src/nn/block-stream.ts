/**
 * The one block-streaming engine of the DiT and Qwen2.5-VL: a stack of `count` blocks of which those
 * with `isResident(i)` are loaded once (`preload`) and kept, and the others are read from the checkpoint
 * when needed. `get(i)` returns block i (a streamed one loaded on demand, with the next streamed block
 * already being read: one block of read-ahead), `release(i, b)` frees a streamed block once its work is
 * recorded (the buffer pool hands memory back only to later dispatches, which WebGPU orders after it).
 * Which blocks are resident is the caller's residency plan (models/dit-config.ts planResidency for the DiT,
 * models/qwen25vl/loader.ts residencyPlan for Qwen, both counted by nn/weight.ts gpuTensorBytes).
 * `scan` runs a forward pass over all blocks with their lifetimes handled here, not in the model: each
 * block's step is a tensor scope, streamed weights are freed after it, and the carried residual streams
 * are replaced (JAX `lax.scan`'s carry).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { fail } from '../errors.js';

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
   * One pass over every block: `step(block, i, carry)` runs in its own tensor scope and returns the next
   * carry (tensors made in the step survive only through it). The carry it replaces is freed as soon as the
   * next exists, except tensors in `keep` (and the caller's first carry stays the caller's to free: it lives
   * in the caller's scope, freeing it here is only early). Backpressure before each block (runtime/gpu.ts
   * pace); a flush after it lets the GPU run the block while the next one is read.
   */
  async scan<C extends Tensor[]>(g: Gpu, init: C, step: (block: T, i: number, carry: C) => Promise<C>, opts: { keep?: readonly Tensor[] } = {}): Promise<C> {
    let carry = init;
    try {
      for (let i = 0; i < this.count; i++) {
        await g.pace(); // at most g.maxInFlight submits ahead of the GPU
        const block = await this.get(i);
        let next: C;
        try {
          next = await g.scopeAsync(() => step(block, i, carry));
        } finally {
          this.release(i, block); // streamed: freed; commands using it are recorded, queue order protects reuse
        }
        for (const t of carry) if (!next.includes(t) && !opts.keep?.includes(t)) t.dispose();
        carry = next;
        g.flush();
      }
      return carry;
    } catch (e) {
      this.abandon();
      throw e;
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
    for (const b of this.held.values()) b.dispose();
    this.held.clear();
    this.preloaded = false;
    for (const p of this.pending.values()) (await p.catch(() => null))?.dispose();
    this.pending.clear();
  }
}

/**
 * Host → GPU streaming for weight loads (nn/upload.ts), owned by the Gpu, in one of two modes:
 *
 *   'ring'   a ring of mappable staging buffers (MAP_WRITE | COPY_SRC): the bytes are produced straight into
 *            a mapped slot (a file read lands there), the slot is unmapped and copied into the destination
 *            by the GPU, and mapped again once that copy has run. One host copy per byte fewer than 'write'.
 *   'write'  `queue.writeBuffer` from two reused host buffers, the next piece's read in flight while the
 *            current one is written; every SUBMIT_BYTES a submit, at most two such batches in flight.
 *
 * Which one a Gpu uses is its `upload` option (Gpu.create), by default 'write' on CPU adapters and 'ring'
 * elsewhere: on lavapipe (2 cores, page cache warm) writing a mapped slot ran at ≈ 1.5 GB/s against ≈ 8 GB/s
 * for plain memory and the ring loaded ≈ 3× slower than writeBuffer, whose copy Dawn makes inside the call; on
 * Dawn's Null backend (the host side of a GPU load) the ring was faster (README "Loading").
 *
 * Backpressure either way: the ring waits for a slot's previous copy before it reuses it (at most
 * `count` × `chunkBytes` staged), 'write' for the batch before the previous one, so staged bytes stay bounded
 * however large the model. Slots and buffers are created on first use and live as long as the Gpu.
 */
import { ExitCode, Step1xError } from '../errors.js';

export type UploadMode = 'ring' | 'write';
export type Fill = (view: Uint8Array, at: number) => void | Promise<void>;

const MAP_WRITE = 0x2;
const COPY_SRC = 0x4;
/** 'write' mode: bytes written between two submits. */
const SUBMIT_BYTES = 256 << 20;

interface Slot {
  buf: GPUBuffer;
  /** The slot's mapped memory (one getMappedRange per mapping), or null while its copy is in flight. */
  view: Uint8Array | null;
  ready: Promise<void> | null;
}

export class Uploader {
  private readonly slots: Slot[] = [];
  private next = 0;
  private host: Uint8Array<ArrayBuffer>[] = [];
  private since = 0;
  private batch: Promise<unknown> | null = null;
  /** Streams run one at a time (slots and host buffers are shared): loads started together queue here. */
  private lock: Promise<void> = Promise.resolve();
  /** Pieces and bytes written (tests, benchmarks). */
  writes = 0;
  bytes = 0;

  constructor(
    private readonly device: GPUDevice,
    readonly mode: UploadMode,
    /** Largest single piece (a multiple of 4). */
    readonly chunkBytes: number,
    /** Ring slots: staged bytes in flight at most count × chunkBytes. */
    readonly count = 4,
  ) {
    if (chunkBytes % 4 || chunkBytes <= 0 || count < 2) throw new Error(`Uploader: ${count} slots of ${chunkBytes} bytes`);
  }

  /**
   * Copy `n` bytes to `dst` at `offset` (a multiple of 4; an odd tail is padded with zeros to whole words,
   * which the caller's bounds check allows), produced by `fill` piece by piece into the view it is given
   * (`at`: the piece's offset within the n bytes). `before` runs before each piece is queued (the caller
   * submits its recorded work first, so that the copy is ordered after it). Resolves once the last piece is
   * queued.
   */
  stream(dst: GPUBuffer, offset: number, n: number, fill: Fill, before: () => void): Promise<void> {
    if (offset % 4) throw new Error(`Uploader.stream: offset ${offset} is not whole words`);
    return this.exclusive(() => this.streamNow(dst, offset, n, fill, before));
  }

  /** Copy host `bytes` (the caller may reuse them once this resolves) to `dst` at `offset`. */
  write(dst: GPUBuffer, offset: number, bytes: Uint8Array, before: () => void): Promise<void> {
    if (this.mode === 'ring') return this.stream(dst, offset, bytes.byteLength, (v, at) => v.set(bytes.subarray(at, at + v.byteLength)), before);
    return this.exclusive(() => this.writeNow(dst, offset, bytes, before));
  }

  private async exclusive(fn: () => Promise<void>): Promise<void> {
    const prev = this.lock;
    let release!: () => void;
    this.lock = new Promise((r) => (release = r));
    await prev;
    try {
      await fn();
    } finally {
      release();
    }
  }

  private async streamNow(dst: GPUBuffer, offset: number, n: number, fill: Fill, before: () => void): Promise<void> {
    if (this.mode === 'ring') {
      for (let at = 0; at < n; at += this.chunkBytes) {
        const len = Math.min(this.chunkBytes, n - at);
        const s = await this.acquire();
        await fill(s.view!.subarray(0, len), at);
        this.submitSlot(s, dst, offset + at, len, before);
      }
      return;
    }
    if (!this.host.length) this.host = [new Uint8Array(this.chunkBytes), new Uint8Array(this.chunkBytes)];
    const piece = (k: number): Promise<void> => {
      const at = k * this.chunkBytes;
      const p = Promise.resolve(fill(this.host[k % 2].subarray(0, Math.min(this.chunkBytes, n - at)), at));
      p.catch(() => undefined); // awaited below; a piece abandoned by an earlier failure must not be unhandled
      return p;
    };
    let cur: Promise<void> | null = n > 0 ? piece(0) : null;
    try {
      for (let k = 0, at = 0; at < n; k++, at += this.chunkBytes) {
        await cur;
        cur = at + this.chunkBytes < n ? piece(k + 1) : null; // the next read in flight while this piece is written
        const len = Math.min(this.chunkBytes, n - at), len4 = Math.ceil(len / 4) * 4;
        this.host[k % 2].fill(0, len, len4);
        before();
        this.device.queue.writeBuffer(dst, offset + at, this.host[k % 2].subarray(0, len4));
        this.count1(len4);
        await this.pace(len4);
      }
    } finally {
      await cur?.catch(() => undefined); // the host buffer is reused only once nothing writes into it
    }
  }

  private async writeNow(dst: GPUBuffer, offset: number, bytes: Uint8Array, before: () => void): Promise<void> {
    for (let at = 0; at < bytes.byteLength; at += this.chunkBytes) {
      let b = bytes.subarray(at, Math.min(bytes.byteLength, at + this.chunkBytes));
      if (b.byteLength % 4) {
        const p = new Uint8Array(Math.ceil(b.byteLength / 4) * 4);
        p.set(b);
        b = p;
      }
      before();
      this.device.queue.writeBuffer(dst, offset + at, b as Uint8Array<ArrayBuffer>);
      this.count1(b.byteLength);
      await this.pace(b.byteLength);
    }
  }

  destroy(): void {
    for (const s of this.slots) s.buf.destroy();
    this.slots.length = 0;
    this.host = [];
  }

  private count1(n: number): void {
    this.writes++;
    this.bytes += n;
  }

  /** 'write' mode: every SUBMIT_BYTES submit the queued writes, then wait for the batch before this one. */
  private async pace(n: number): Promise<void> {
    this.since += n;
    if (this.since < SUBMIT_BYTES) return;
    this.since = 0;
    const prev = this.batch;
    this.device.queue.submit([]);
    const done = this.device.queue.onSubmittedWorkDone();
    done.catch(() => undefined); // a lost device surfaces at the runtime's next sync
    this.batch = done;
    if (prev) await prev.catch(() => undefined);
  }

  private submitSlot(s: Slot, dst: GPUBuffer, offset: number, len: number, before: () => void): void {
    const len4 = Math.ceil(len / 4) * 4;
    s.view!.fill(0, len, len4);
    s.view = null;
    s.buf.unmap();
    before();
    const enc = this.device.createCommandEncoder({ label: 'upload ring' });
    enc.copyBufferToBuffer(s.buf, 0, dst, offset, len4);
    this.device.queue.submit([enc.finish()]);
    const ready = s.buf.mapAsync(MAP_WRITE).then(() => {
      s.view = new Uint8Array(s.buf.getMappedRange(0, this.chunkBytes));
    });
    ready.catch(() => undefined); // surfaced by the next acquire of this slot
    s.ready = ready;
    this.count1(len4);
  }

  private async acquire(): Promise<Slot> {
    if (this.slots.length < this.count) {
      const buf = this.device.createBuffer({ size: this.chunkBytes, usage: MAP_WRITE | COPY_SRC, mappedAtCreation: true, label: 'upload ring' });
      const s: Slot = { buf, view: new Uint8Array(buf.getMappedRange(0, this.chunkBytes)), ready: null };
      this.slots.push(s);
      return s;
    }
    const s = this.slots[this.next];
    this.next = (this.next + 1) % this.count;
    if (s.ready) {
      try {
        await s.ready;
      } catch (e) {
        throw new Step1xError(`GPU upload failed (a staging buffer could not be mapped again): ${(e as Error).message}`, ExitCode.GPU);
      } finally {
        s.ready = null;
      }
    }
    if (!s.view) throw new Step1xError('GPU upload failed: a staging buffer was lost (device lost?)', ExitCode.GPU);
    return s;
  }
}

/**
 * GPU buffer pool with a byte counter.
 *
 * Buffers are bucketed by size (powers of two below 1 MiB, 1 MiB steps above, exact above 256 MiB)
 * so transient activations of similar shapes reuse memory. `liveBytes` counts buffers handed out,
 * `peakLiveBytes` its high-water mark: the pipeline's memory budget and the tests read these.
 * Cached free buffers count in `cachedBytes`; `trim()` destroys them (called between stages).
 *
 * Static allocation per stage: freed buffers are kept (by default without a byte cap) until `trim()`,
 * so a size class never holds more buffers than were live at once, and an op sequence that repeats
 * (a DiT step) creates no buffer after its first run. Dawn zero-fills every new buffer and frees a
 * destroyed one only after the submits that used it, so creating and destroying per op costs GPU time
 * and multiplies the footprint by the host's lead. A class hands out its lowest-id free buffer first:
 * the same op sequence then gets the same buffers every time, which keeps bind groups cached.
 */
export interface PooledBuffer {
  buffer: GPUBuffer;
  size: number;
  /** Stable id (bind groups are cached by it: runtime/bind-cache.ts). */
  id: number;
}

let nextId = 1;

const USAGE = 0x80 /* STORAGE */ | 0x4 /* COPY_SRC */ | 0x8; /* COPY_DST */

function bucket(bytes: number): number {
  const b = Math.max(256, bytes);
  if (b <= 1 << 20) return 2 ** Math.ceil(Math.log2(b));
  if (b <= 256 << 20) return Math.ceil(b / (1 << 20)) * (1 << 20);
  return Math.ceil(b / 256) * 256;
}

export class BufferPool {
  private free = new Map<number, PooledBuffer[]>();
  private toDestroy: PooledBuffer[] = [];
  liveBytes = 0;
  peakLiveBytes = 0;
  cachedBytes = 0;
  /** Upper bound on cached free bytes before they are destroyed instead of kept. */
  maxCachedBytes = Infinity;
  /** Called just before a buffer is destroyed (the bind-group cache forgets it). */
  onDestroy?: (pb: PooledBuffer) => void;
  /** Buffers created since construction (the dry run and tests read it). */
  created = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly maxBufferBytes: number,
  ) {}

  acquire(bytes: number, label = ''): PooledBuffer {
    const size = bucket(bytes);
    if (size > this.maxBufferBytes)
      throw new Error(`buffer of ${size} bytes exceeds the device's maxBufferSize ${this.maxBufferBytes}`);
    const list = this.free.get(size);
    let pb = list?.pop();
    if (pb) this.cachedBytes -= size;
    else {
      pb = { buffer: this.device.createBuffer({ size, usage: USAGE, label }), size, id: nextId++ };
      this.created++;
    }
    this.liveBytes += size;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
    return pb;
  }

  release(pb: PooledBuffer): void {
    this.liveBytes -= pb.size;
    if (this.cachedBytes + pb.size > this.maxCachedBytes) {
      // Commands recorded but not yet submitted may still use it: destroy after the next submit.
      this.toDestroy.push(pb);
      return;
    }
    let list = this.free.get(pb.size);
    if (!list) this.free.set(pb.size, (list = []));
    // kept sorted by id, highest first: pop() hands out the lowest id
    let i = list.length;
    while (i > 0 && list[i - 1].id < pb.id) i--;
    list.splice(i, 0, pb);
    this.cachedBytes += pb.size;
  }

  resetPeak(): void {
    this.peakLiveBytes = this.liveBytes;
  }

  /** Drop all cached free buffers (destroyed after the next submit). */
  trim(): void {
    for (const list of this.free.values()) this.toDestroy.push(...list);
    this.free.clear();
    this.cachedBytes = 0;
  }

  /**
   * Destroy a buffer handed out by `acquire` that no command has used yet (a failed allocation):
   * it is neither cached nor counted as live any more.
   */
  discard(pb: PooledBuffer): void {
    this.liveBytes -= pb.size;
    this.destroy(pb);
  }

  private destroy(pb: PooledBuffer): void {
    this.onDestroy?.(pb);
    pb.buffer.destroy();
  }

  /** Freed buffers waiting for the next submit to be destroyed (their memory is held until then). */
  get destroyPending(): number {
    return this.toDestroy.length;
  }

  /** Called by the runtime right after a submit: nothing unsubmitted refers to these any more. */
  collect(): void {
    for (const pb of this.toDestroy) this.destroy(pb);
    this.toDestroy = [];
  }
}

/**
 * Per-pipeline GPU time (`STEP1X_PROFILE=1` or `gpu.enableProfiling()`).
 *
 * With the device feature 'timestamp-query' the runtime records every dispatch in its own compute pass
 * with `timestampWrites` (begin/end query pair per pass). At each flush the pairs are resolved into a
 * buffer, copied to a mappable staging buffer in the same submit, and read back asynchronously; the
 * durations are summed by pipeline key (`file:entry:DEFINES`). One pass per dispatch costs some speed,
 * so profiling is off by default.
 * Without the feature the profiler falls back to CPU wall time per flush (submit → onSubmittedWorkDone)
 * and only counts dispatches per key; the report says so.
 */

export interface ProfileRow {
  key: string;
  count: number;
  /** Total milliseconds; NaN where no time was measured (CPU fallback: per-key rows). */
  totalMs: number;
  meanUs: number;
}

export interface ProfileReport {
  mode: 'gpu-timestamps' | 'cpu-flush' | 'off';
  rows: ProfileRow[];
  note: string;
  /** The rows as an aligned text table (what `print` writes to stderr). */
  text: string;
}

/** Dispatches (query pairs) recorded per flush before the runtime must flush. */
export const MAX_TIMED_DISPATCHES = 1024;

const FLUSH_KEY = '(flush: submit to done, CPU wall time)';

export class Profiler {
  private stats = new Map<string, { count: number; ns: number }>();
  private querySet: GPUQuerySet | null = null;
  private resolveBuf: GPUBuffer | null = null;
  /** Pipeline key of each query pair recorded since the last flush. */
  private keys: string[] = [];
  private inflight = new Set<Promise<void>>();
  private errors: string[] = [];

  constructor(
    private readonly device: GPUDevice,
    /** True: GPU timestamps per dispatch; false: CPU time per flush. */
    readonly timestamps: boolean,
  ) {
    if (timestamps) {
      this.querySet = device.createQuerySet({ type: 'timestamp', count: 2 * MAX_TIMED_DISPATCHES, label: 'step1x profiler' });
      this.resolveBuf = device.createBuffer({
        size: 16 * MAX_TIMED_DISPATCHES,
        usage: 0x200 /* QUERY_RESOLVE */ | 0x4 /* COPY_SRC */,
        label: 'step1x profiler resolve',
      });
    }
  }

  /** No query pair is left in this flush: the runtime flushes before the next timed dispatch. */
  get full(): boolean {
    return this.keys.length >= MAX_TIMED_DISPATCHES;
  }

  /** Timestamp writes for the pass of the next dispatch (timestamp mode), or count it (CPU mode). */
  passTimestamps(key: string): GPUComputePassTimestampWrites | undefined {
    if (!this.timestamps) {
      this.add(key, 1, NaN);
      return undefined;
    }
    const i = this.keys.length;
    this.keys.push(key);
    return { querySet: this.querySet!, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /**
   * Called by the runtime with the batch encoder right before `finish()`. Returns a callback to run
   * right after `queue.submit`, which starts the asynchronous readback of this batch's times.
   */
  beforeSubmit(encoder: GPUCommandEncoder): () => void {
    if (!this.timestamps) {
      return () => {
        const t0 = performance.now();
        this.track(this.device.queue.onSubmittedWorkDone().then(() => this.add(FLUSH_KEY, 1, (performance.now() - t0) * 1e6)));
      };
    }
    const keys = this.keys;
    this.keys = [];
    if (!keys.length) return () => {};
    const bytes = 16 * keys.length;
    const staging = this.device.createBuffer({ size: bytes, usage: 0x1 /* MAP_READ */ | 0x8 /* COPY_DST */, label: 'step1x profiler staging' });
    encoder.resolveQuerySet(this.querySet!, 0, 2 * keys.length, this.resolveBuf!, 0);
    encoder.copyBufferToBuffer(this.resolveBuf!, 0, staging, 0, bytes);
    return () => {
      this.track(
        staging.mapAsync(0x1 /* READ */).then(() => {
          const t = new BigUint64Array(staging.getMappedRange().slice(0));
          keys.forEach((k, i) => {
            const d = t[2 * i + 1] - t[2 * i];
            // A pair can come back reversed or zero on some drivers (timestamps are not guaranteed to be
            // monotonic across passes): count it, add no time rather than a huge unsigned wrap.
            this.add(k, 1, d > 0n && d < 1n << 52n ? Number(d) : 0);
          });
          staging.unmap();
          staging.destroy();
        }),
      );
    };
  }

  /** The runtime dropped the batch recorded since the last flush (after a GPU error). */
  discard(): void {
    this.keys = [];
  }

  private track(p: Promise<void>): void {
    const q = p.catch((e: Error) => {
      this.errors.push(e.message);
    });
    this.inflight.add(q);
    void q.finally(() => this.inflight.delete(q));
  }

  private add(key: string, count: number, ns: number): void {
    let s = this.stats.get(key);
    if (!s) this.stats.set(key, (s = { count: 0, ns: 0 }));
    s.count += count;
    s.ns += ns;
  }

  /** Wait for every readback started so far. */
  async settle(): Promise<void> {
    while (this.inflight.size) await Promise.all([...this.inflight]);
  }

  /** Forget all measurements (keeps the mode). */
  reset(): void {
    this.stats.clear();
  }

  /** The table, sorted by total time (then count). Call `settle()` first for complete numbers. */
  report(): ProfileReport {
    const rows: ProfileRow[] = [...this.stats].map(([key, s]) => ({
      key,
      count: s.count,
      totalMs: s.ns / 1e6,
      meanUs: s.ns / 1e3 / s.count,
    }));
    const v = (r: ProfileRow) => (Number.isNaN(r.totalMs) ? -1 : r.totalMs);
    rows.sort((a, b) => v(b) - v(a) || b.count - a.count);
    const note = this.timestamps
      ? 'GPU time per dispatch from timestamp queries (one compute pass per dispatch while profiling)'
      : "the device has no 'timestamp-query': times are CPU wall time per flush; per-pipeline rows only count dispatches";
    const extra = this.errors.length ? `; ${this.errors.length} readbacks failed (${this.errors[0]})` : '';
    return { mode: this.timestamps ? 'gpu-timestamps' : 'cpu-flush', rows, note: note + extra, text: formatTable(rows, note + extra) };
  }

  destroy(): void {
    this.querySet?.destroy();
    this.resolveBuf?.destroy();
    this.querySet = null;
    this.resolveBuf = null;
  }
}

export function formatTable(rows: readonly ProfileRow[], note: string): string {
  const fmt = (v: number, d: number) => (Number.isNaN(v) ? '-' : v.toFixed(d));
  const cells = rows.map((r) => [r.key, String(r.count), fmt(r.totalMs, 3), fmt(r.meanUs, 1)]);
  const head = ['pipeline', 'count', 'total ms', 'mean µs'];
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((v, i) => (i === 0 ? v.padEnd(w[i]) : v.padStart(w[i]))).join('  ');
  const total = rows.reduce((a, r) => a + (Number.isNaN(r.totalMs) ? 0 : r.totalMs), 0);
  return [line(head), ...cells.map(line), `total ${total.toFixed(3)} ms; ${note}`].join('\n');
}

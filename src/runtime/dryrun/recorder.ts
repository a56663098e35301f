/**
 * What a dry run measures: the work the code asks of the device, counted per segment (a stage, or one
 * DiT step), and the device memory it would occupy.
 *
 * Memory model (Dawn's, ../shared/design.md §5): a destroyed buffer's bytes stay counted until the GPU
 * has finished the last submit that used it. The GPU is modelled `lag` submits behind the host (the
 * host encodes ahead until it waits): after submit s, submits ≤ s − lag are complete; a sync
 * (onSubmittedWorkDone, a readback's mapAsync) completes everything. `peak` is the high-water mark of
 * live + pending-free bytes, sampled at every buffer creation and submit.
 */
export interface Counts {
  dispatches: number;
  submits: number;
  syncs: number;
  bind_groups_created: number;
  buffers_created: number;
  bytes_allocated: number;
  /** Peak co-existing bytes (live + pending frees) inside this segment. */
  peak_bytes: number;
  /** Global-memory traffic: bytes bound by every dispatch (each binding once) plus copies read and written. */
  bound_bytes: number;
  /** GEMM operand re-reads the tile plan implies beyond the one read in bound_bytes (traffic.ts). */
  reread_bytes: number;
}

export interface KernelUse {
  /** e.g. "dit.gemm M=17664 K=3072 N=9216" (model from the stage, then the op and its dimensions). */
  shape: string;
  variant: string;
  tile: string;
  matrix_units: boolean;
  dispatches: number;
}

export interface DryRunReport {
  profile: string;
  device: string;
  memory_bytes: number;
  /** Submits the GPU is modelled behind the host. */
  submits_in_flight: number;
  peak_bytes: number;
  plan_peak_bytes: number | null;
  stages: (Counts & { stage: string })[];
  steps: (Counts & { step: number })[];
  kernels: KernelUse[];
  /** Global-memory traffic of one DiT step: step 2 (step 1 also builds per-run constants), else step 1; null without steps. */
  traffic: { step: number; bound_bytes: number; reread_bytes: number; total_bytes: number } | null;
}

export interface Tracked {
  size: number;
  /** Serial of the last submit that used it (0: none yet). */
  lastUse: number;
  destroyed: boolean;
}

const zero = (): Counts => ({ dispatches: 0, submits: 0, syncs: 0, bind_groups_created: 0, buffers_created: 0, bytes_allocated: 0, peak_bytes: 0, bound_bytes: 0, reread_bytes: 0 });

import { gemmRereadBytes } from './traffic.js';
import { uniformOf, type Uniforms } from '../uniforms.js';

// the v1.2 thinker (stage reason) runs the same Qwen as embed: its shapes are Qwen's
const MODEL_OF: Record<string, string> = { embed: 'qwen', reason: 'qwen', encode: 'vae', decode: 'vae', sample: 'dit' };

export class Recorder {
  /** Submits the GPU runs behind the host (the runtime sets its bound on submits in flight). */
  lag: number;
  private serial = 0;
  private completed = 0;
  private liveBytes = 0;
  private pending: Tracked[] = [];
  private pendingBytes = 0;
  /** Buffers written by queue.writeBuffer since the last submit: the next submit uses them. */
  private writes = new Set<Tracked>();
  peak = 0;
  planPeak: number | null = null;
  private stage = 'load';
  private step = 0;
  private current: Counts = zero();
  private stages = new Map<string, Counts>();
  private steps = new Map<number, Counts>();
  private kernels = new Map<string, KernelUse>();

  constructor(readonly profile: { id: string; description: string; memoryBytes: number }, lag = 2) {
    this.lag = lag;
  }

  /** Close the running segment and open one for `stage` (and DiT step `step` ≥ 1, if given). */
  mark(stage: string, step = 0): void {
    this.closeSegment();
    this.stage = stage;
    this.step = step;
  }

  /** Start a fresh report (a batch's next image); the memory state carries over. */
  reset(): void {
    this.current = zero();
    this.current.peak_bytes = this.liveBytes + this.pendingBytes;
    this.stages.clear();
    this.steps.clear();
    this.kernels.clear();
    this.peak = this.liveBytes + this.pendingBytes;
    this.stage = 'load';
    this.step = 0;
  }

  private closeSegment(): void {
    const c = this.current;
    const add = (into: Counts) => {
      for (const k of Object.keys(c) as (keyof Counts)[]) into[k] = k === 'peak_bytes' ? Math.max(into[k], c[k]) : into[k] + c[k];
    };
    const s = this.stages.get(this.stage) ?? zero();
    add(s);
    this.stages.set(this.stage, s);
    if (this.step > 0) {
      const t = this.steps.get(this.step) ?? zero();
      add(t);
      this.steps.set(this.step, t);
    }
    this.current = zero();
    this.current.peak_bytes = this.liveBytes + this.pendingBytes;
  }

  private sample(): void {
    const now = this.liveBytes + this.pendingBytes;
    if (now > this.peak) this.peak = now;
    if (now > this.current.peak_bytes) this.current.peak_bytes = now;
  }

  created(b: Tracked): void {
    this.liveBytes += b.size;
    this.current.buffers_created++;
    this.current.bytes_allocated += b.size;
    this.sample();
  }

  destroyed(b: Tracked): void {
    if (b.destroyed) return;
    b.destroyed = true;
    this.liveBytes -= b.size;
    if (b.lastUse > this.completed || this.writes.has(b)) {
      this.pending.push(b);
      this.pendingBytes += b.size;
    }
  }

  written(b: Tracked): void {
    this.writes.add(b);
  }

  bindGroup(): void {
    this.current.bind_groups_created++;
  }

  dispatch(): void {
    this.current.dispatches++;
  }

  submitted(uses: Iterable<Tracked>): void {
    const s = ++this.serial;
    for (const b of uses) b.lastUse = s;
    for (const b of this.writes) b.lastUse = s;
    this.writes.clear();
    this.current.submits++;
    this.sample(); // the bytes this submit holds are counted before the GPU catches up
    this.complete(s - this.lag);
  }

  /** The host waits for the GPU: everything submitted completes. */
  synced(): void {
    this.current.syncs++;
    this.complete(this.serial);
  }

  private complete(upTo: number): void {
    if (upTo <= this.completed) return;
    this.completed = upTo;
    const keep: Tracked[] = [];
    for (const b of this.pending) {
      if (b.lastUse > this.completed || this.writes.has(b)) keep.push(b);
      else this.pendingBytes -= b.size;
    }
    this.pending = keep;
  }

  /** A copy pass of `bytes`: read once and written once. */
  copied(bytes: number): void {
    this.current.bound_bytes += 2 * bytes;
  }

  /**
   * A dispatch's kernel: its traffic (the bytes of every binding, `bound`, plus the GEMM re-reads of
   * traffic.ts); GEMM, conv and attention shapes are read from their uniform blocks (M, N, K / conv sizes / Lq, Lk, H).
   */
  kernel(file: string, entry: string, defines: Record<string, string | number | boolean>, uniforms: Uniforms | undefined, bound: readonly number[] = []): void {
    const u = (name: string) => uniformOf(uniforms, name);
    for (const b of bound) this.current.bound_bytes += b;
    this.current.reread_bytes += gemmRereadBytes(file, entry, defines, uniforms, bound);
    const model = MODEL_OF[this.stage] ?? this.stage;
    let shape: string;
    // convs: direct conv2d.wgsl or the implicit GEMM (gemm-sgmat.wgsl with CONV): the same member names
    if ((file === 'conv2d.wgsl' && entry === 'main') || defines.CONV) {
      const [H, W, C, O, KH, KW, st, ups] = ['H', 'W', 'CT', 'O_all', 'KH', 'KW', 'stride', 'ups'].map(u);
      shape = `${model}.conv ${KH}x${KW} C=${C} O=${O} ${H}x${W}${ups ? ' up2x' : ''}${st > 1 ? ` s${st}` : ''}`;
    } else if (file.startsWith('gemm')) shape = `${model}.gemm M=${u('M')} K=${u('K')} N=${u('N')}`;
    else if (file.startsWith('attention')) shape = `${model}.attention Lq=${u('lq')} Lk=${u('lk')} H=${u('h')}`;
    else return;
    const entries = Object.entries(defines).sort(([a], [b]) => (a < b ? -1 : 1));
    const tile = entries.filter(([k, v]) => typeof v === 'number' && !k.startsWith('B_')).map(([k, v]) => `${k}=${v}`).join(',');
    const flags = entries.filter(([k, v]) => typeof v !== 'number' && v !== false).map(([k, v]) => (v === true ? k : `${k}=${v}`));
    const variant = `${file}:${entry}${flags.length ? ` ${flags.join(',')}` : ''}`;
    const key = `${shape}|${variant}|${tile}`;
    const k = this.kernels.get(key);
    if (k) k.dispatches++;
    else this.kernels.set(key, { shape, variant, tile, matrix_units: file.includes('sgmat'), dispatches: 1 });
  }

  report(): DryRunReport {
    this.closeSegment();
    const stages = [...this.stages].filter(([, c]) => c.dispatches || c.buffers_created || c.submits).map(([stage, c]) => ({ stage, ...c }));
    const steps = [...this.steps].sort(([a], [b]) => a - b).map(([step, c]) => ({ step, ...c }));
    const kernels = [...this.kernels.values()].sort((a, b) => (a.shape < b.shape ? -1 : a.shape > b.shape ? 1 : b.dispatches - a.dispatches));
    const t = steps[1] ?? steps[0];
    const traffic = t ? { step: t.step, bound_bytes: t.bound_bytes, reread_bytes: t.reread_bytes, total_bytes: t.bound_bytes + t.reread_bytes } : null;
    return {
      profile: this.profile.id, device: this.profile.description, memory_bytes: this.profile.memoryBytes, submits_in_flight: this.lag,
      peak_bytes: this.peak, plan_peak_bytes: this.planPeak, stages, steps, kernels, traffic,
    };
  }
}

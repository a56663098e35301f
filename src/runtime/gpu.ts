/**
 * Gpu: the runtime object. Owns the device, the buffer pool, the pipeline cache and the batched
 * command encoder. Ops call `gpu.dispatch(kernel)`; models only see Tensors.
 *
 * Kernel binding convention (every shader follows it):
 *   @group(0) @binding(0) var<uniform> U : Params;     // when `uniforms` is given: 4-byte scalars in order
 *   @group(0) @binding(1..n) var<storage, ...>         // `bindings[0..n-1]`, in order
 * Dispatches are recorded into one compute pass and submitted in batches; WebGPU orders dispatches,
 * so each sees the previous one's writes. `read()` is the only await in a hot path.
 */
import { createDevice, describeAdapter, type DeviceHandle, type DeviceOptions, type AdapterDescription } from './device.js';
import { BufferPool } from './buffer-pool.js';
import { Storage, Tensor, type DType, DTYPE_BYTES, numelOf, storageBytes } from './tensor.js';
import { Profiler, type ProfileReport } from './profiler.js';
import { pipelineKey, type Defines } from './shader-source.js';
import { PipelineCache } from './pipeline-cache.js';
import { BindGroupCache, type BindEntry } from './bind-cache.js';
import { bf16ArrayToF32, f16ArrayToF32 } from './half.js';
import { ExitCode, Step1xError, fail, fmtShape } from '../errors.js';
import type { Capabilities, KernelFamily, Precision } from './caps.js';
import { appendFileSync } from 'node:fs';
import type { Recorder } from './dryrun/recorder.js';
import { ScopeStack } from './scope.js';

/** A uniform scalar: plain numbers are u32; wrap signed or float values. */
export type Uniform = number | { i32: number } | { f32: number };
export const f32u = (v: number): Uniform => ({ f32: v });
export const i32u = (v: number): Uniform => ({ i32: v });

export interface Kernel {
  file: string;
  entry?: string;
  defines?: Defines;
  uniforms?: Uniform[];
  bindings: Tensor[];
  workgroups: [number, number?, number?];
}

export type HostData = Float32Array | Int32Array | Uint32Array | Uint16Array;

const UNIFORM_SLOT = 256;
const MAX_BATCH = 256;
/** Submits the GPU may be behind before `pace()` waits (STEP1X_MAX_INFLIGHT overrides). */
const MAX_IN_FLIGHT = 2;

/** Live runtimes, oldest first: `current()` is the newest one not yet destroyed. */
const live: Gpu[] = [];

export class Gpu {
  readonly device: GPUDevice;
  readonly pool: BufferPool;
  /** Open tensor scopes (runtime/scope.ts): every Tensor made on this runtime is tracked by the innermost. */
  readonly scopes = new ScopeStack();
  private readonly pipelines: PipelineCache;
  private profiler: Profiler | null = null;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private uniformHost = new ArrayBuffer(UNIFORM_SLOT * MAX_BATCH);
  private uniformCount = 0;
  private uniformBuf: GPUBuffer;
  private pending = 0;
  private staging: GPUBuffer | null = null;
  private passPipeline: GPUComputePipeline | null = null;
  private readonly keyMemo = new Map<string, string>();
  private readonly dynOffset = [0];
  private stagingBusy = false;
  private readonly bindGroups: BindGroupCache;
  /** Completion of each submit not yet known to be done, oldest first (backpressure). */
  private inFlight: Promise<unknown>[] = [];
  /** Submits the host may lead the GPU by at a `pace()` point. */
  readonly maxInFlight: number;
  /** Number of dispatches recorded since creation (benchmarks, tests). */
  dispatchCount = 0;
  /** Host → GPU writes since creation (writeInto / writeBytes calls and bytes): per-step counts in tests. */
  uploadCount = 0;
  uploadBytes = 0;
  /** Dispatches per shader file (STEP1X_DISPATCH_LOG appends them at destroy: the CI guard counts them). */
  readonly fileCounts = new Map<string, number>();

  private constructor(readonly handle: DeviceHandle) {
    this.device = handle.device;
    this.pool = new BufferPool(this.device, handle.maxBufferBytes);
    this.pipelines = new PipelineCache(this.device);
    this.bindGroups = new BindGroupCache(this.device);
    this.pool.onDestroy = (pb) => this.bindGroups.evictBuffer(pb.id);
    const env = Number(process.env.STEP1X_MAX_INFLIGHT);
    this.maxInFlight = Number.isInteger(env) && env >= 1 ? env : MAX_IN_FLIGHT;
    // The dry run models the GPU as far behind as pacing lets it be.
    if (handle.dryrun && process.env.STEP1X_DRYRUN_INFLIGHT === undefined) handle.dryrun.lag = this.maxInFlight;
    this.uniformBuf = this.device.createBuffer({
      size: UNIFORM_SLOT * MAX_BATCH,
      usage: 0x40 /* UNIFORM */ | 0x8 /* COPY_DST */,
      label: 'uniforms',
    });
  }

  static async create(opts: DeviceOptions = {}): Promise<Gpu> {
    const g = new Gpu(await createDevice(opts));
    live.push(g);
    if (process.env.STEP1X_PROFILE === '1') g.enableProfiling();
    return g;
  }

  /** The most recently created, not yet destroyed runtime. */
  static current(): Gpu {
    const g = live[live.length - 1];
    if (!g) fail('no GPU runtime: call Gpu.create() first');
    return g;
  }

  get maxBindingBytes(): number {
    return this.handle.maxBindingBytes;
  }
  set maxBindingBytes(v: number) {
    this.handle.maxBindingBytes = Math.min(v, this.device.limits.maxStorageBufferBindingSize);
  }
  get maxWorkgroupStorage(): number {
    return this.handle.maxWorkgroupStorage;
  }
  get maxWorkgroupsPerDim(): number {
    return this.handle.maxWorkgroupsPerDim;
  }
  /** Adapter capabilities (plans read them). */
  get caps(): Capabilities {
    return this.handle.caps;
  }
  /** The kernel family in force on this device (--kernels / STEP1X_KERNELS resolved). */
  get kernels(): Exclude<KernelFamily, 'auto'> {
    return this.handle.kernels;
  }
  get precision(): Precision {
    return this.handle.precision;
  }
  hasFeature(f: string): boolean {
    return this.handle.features.has(f);
  }
  describe(): AdapterDescription {
    return describeAdapter(this.handle.adapter);
  }
  /** The recorder of a dry-run device (STEP1X_DRYRUN); undefined on a real one. */
  get dryrun(): Recorder | undefined {
    return this.handle.dryrun;
  }
  /** The device's memory when known (a dry-run profile's); WebGPU does not tell it on a real device. */
  get memoryBytes(): number | undefined {
    return this.handle.dryrun?.profile.memoryBytes;
  }
  /** Whether this device does no GPU work (loaders then allocate weights without reading them). */
  get isDryRun(): boolean {
    return this.handle.dryrun !== undefined;
  }
  /**
   * Where the run is: a stage ('embed', 'encode', 'sample', 'decode') and, while sampling, the DiT step
   * (1-based). The dry run counts its work per mark; on a real device this costs nothing.
   */
  mark(stage: string, step?: number): void {
    this.handle.dryrun?.mark(stage, step);
  }

  // ---- scoped lifetimes (runtime/scope.ts) ------------------------------------------------------

  /** Run fn; tensors it makes are disposed at the end unless returned (TF.js tidy). */
  scope<T>(fn: () => T): T {
    return this.scopes.run(fn);
  }
  /** `scope` for async work (taps, streamed weights); scopes must not interleave. */
  scopeAsync<T>(fn: () => Promise<T>): Promise<T> {
    return this.scopes.runAsync(fn);
  }
  /** Tensors made inside fn belong to no scope (weights loaded mid-forward, long-lived caches). */
  untracked<T>(fn: () => T): T {
    return this.scopes.untracked(fn);
  }
  /** Take a tensor out of its scope: the caller disposes it. */
  keep<T extends Tensor | undefined>(t: T): T {
    return this.scopes.keep(t);
  }

  // ---- allocation -------------------------------------------------------------------------------

  empty(shape: readonly number[], dtype: DType = 'f32', label = ''): Tensor {
    const bytes = storageBytes(dtype, numelOf(shape));
    let pb;
    try {
      pb = this.pool.acquire(bytes, label);
    } catch (e) {
      throw new Step1xError(`cannot allocate ${label || 'tensor'} [${shape}]: ${(e as Error).message}`, ExitCode.GPU_OOM);
    }
    return new Tensor(new Storage(this, pb, numelOf(shape) * DTYPE_BYTES[dtype]), shape, dtype, 0, label);
  }

  /**
   * Like `empty()`, but waits for the driver's verdict on a newly created buffer: an allocation the
   * device cannot back (WebGPU reports it asynchronously through an 'out-of-memory' error scope, the
   * buffer object is returned anyway) rejects with Step1xError(GPU_OOM) instead of failing later at an
   * unrelated sync point. Pipelines use it for big buffers so that they can fall back to streaming.
   */
  async allocChecked(shape: readonly number[], dtype: DType = 'f32', label = ''): Promise<Tensor> {
    const bytes = storageBytes(dtype, numelOf(shape));
    const what = `${label || 'tensor'} ${fmtShape(shape)} ${dtype} (${(bytes / 2 ** 20).toFixed(1)} MiB)`;
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
    let pb;
    let thrown: unknown;
    try {
      pb = this.pool.acquire(bytes, label);
    } catch (e) {
      thrown = e;
    }
    // Pop both scopes before awaiting, so that no other work's errors land in them.
    const popped = [this.device.popErrorScope(), this.device.popErrorScope()];
    const [validation, oom] = await Promise.all(popped);
    if (thrown || !pb) throw new Step1xError(`cannot allocate ${what}: ${(thrown as Error).message}`, ExitCode.GPU_OOM);
    const err = oom ?? validation;
    if (err) {
      this.pool.discard(pb);
      throw new Step1xError(
        `out of GPU memory allocating ${what}: ${err.message.split('\n')[0]}. ` +
          'Lower --vram-budget so that weights are streamed, or use a smaller --size',
        ExitCode.GPU_OOM,
      );
    }
    return new Tensor(new Storage(this, pb, numelOf(shape) * DTYPE_BYTES[dtype]), shape, dtype, 0, label);
  }

  upload(data: HostData, shape: readonly number[], dtype: DType = 'f32', label = ''): Tensor {
    const n = numelOf(shape);
    if (data.length !== n) fail(`upload ${label}: ${data.length} values for shape ${fmtShape(shape)}`);
    if (data.BYTES_PER_ELEMENT !== DTYPE_BYTES[dtype])
      fail(`upload ${label}: ${data.constructor.name} cannot hold ${dtype} values (bf16/f16 take Uint16Array bits)`);
    const t = this.empty(shape, dtype, label);
    this.writeInto(t, data);
    return t;
  }

  /** Overwrite a tensor's contents from the host (flushes pending work first: the buffer may be reused). */
  writeInto(t: Tensor, data: HostData): void {
    t.assertAlive();
    if (data.byteLength > t.numel * DTYPE_BYTES[t.dtype])
      fail(`writeInto: ${data.byteLength} bytes do not fit ${t.toString()} (${t.numel * DTYPE_BYTES[t.dtype]} bytes)`);
    // queue.writeBuffer writes whole words. An odd count of 16-bit values ends in half a word; the pad is
    // harmless at the end of the storage, but inside a view it would zero the next tensor element.
    if (data.byteLength % 4 && t.byteOffset + data.byteLength < t.storage.bytes)
      fail(`writeInto: odd number of 16-bit values into ${t.toString()}, which shares its last word with the next element`);
    // Recorded commands may still read the old contents (or the previous owner of a pooled buffer):
    // submit them first, so that the write is ordered after them on the queue.
    if (this.pending) this.flush();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded = bytes.byteLength % 4 ? (() => {
      const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      p.set(bytes);
      return p;
    })() : bytes;
    this.device.queue.writeBuffer(t.storage.pooled.buffer, t.byteOffset, padded as Uint8Array<ArrayBuffer>);
    this.uploadCount++;
    this.uploadBytes += padded.byteLength;
  }

  /**
   * Write raw bytes into a tensor at a byte offset (streamed weight loading: one chunk at a time from a
   * reused host buffer, which may be overwritten as soon as this returns). Same ordering rule as writeInto.
   */
  writeBytes(t: Tensor, byteOffset: number, bytes: Uint8Array): void {
    t.assertAlive();
    const room = t.storage.bytes - t.byteOffset;
    if (byteOffset % 4 || byteOffset < 0 || byteOffset + bytes.byteLength > Math.min(room, Math.ceil(t.byteLength / 4) * 4))
      fail(`writeBytes: ${bytes.byteLength} bytes at byte ${byteOffset} do not fit ${t.toString()} (${t.byteLength} bytes, offsets in whole words)`);
    if (bytes.byteLength % 4 && t.byteOffset + byteOffset + bytes.byteLength < t.storage.bytes)
      fail(`writeBytes: ${bytes.byteLength} bytes (not whole words) end inside ${t.toString()}'s storage, the pad would overwrite the next element`);
    if (this.pending) this.flush();
    let b = bytes;
    if (b.byteLength % 4) {
      b = new Uint8Array(Math.ceil(b.byteLength / 4) * 4);
      b.set(bytes);
    }
    this.device.queue.writeBuffer(t.storage.pooled.buffer, t.byteOffset + byteOffset, b as Uint8Array<ArrayBuffer>);
    this.uploadCount++;
    this.uploadBytes += b.byteLength;
  }

  // ---- pipelines and dispatch ---------------------------------------------------------------------

  pipeline(file: string, entry = 'main', defines: Defines = {}, key = pipelineKey(file, entry, defines)): GPUComputePipeline {
    return this.pipelines.get(file, entry, defines, key).pipeline;
  }

  dispatch(k: Kernel): void {
    const [x, y = 1, z = 1] = k.workgroups;
    const maxWg = this.handle.maxWorkgroupsPerDim;
    if (x > maxWg || y > maxWg || z > maxWg)
      fail(`${k.file}: dispatch [${x},${y},${z}] exceeds maxComputeWorkgroupsPerDimension ${maxWg}`);
    if (x === 0 || y === 0 || z === 0) return;
    // Validate everything before recording anything, so that a failed call leaves no half-recorded state.
    for (const [i, t] of k.bindings.entries()) {
      t.assertAlive();
      if (t.byteLength > this.handle.maxBindingBytes)
        fail(`${k.file}: binding ${i + 1} ${t.toString()} is ${t.byteLength} bytes, over the device's binding limit ${this.handle.maxBindingBytes}`);
    }
    if (k.uniforms && k.uniforms.length * 4 > UNIFORM_SLOT) fail(`${k.file}: ${k.uniforms.length} uniforms, at most ${UNIFORM_SLOT / 4}`);
    k.uniforms?.forEach((u, i) => {
      if (typeof u === 'number' && (!Number.isInteger(u) || u < 0 || u > 0xffffffff)) fail(`${k.file}: uniform ${i} = ${u} is not a u32`);
    });
    const entry = k.entry ?? 'main';
    const key = this.keyOf(k.file, entry, k.defines);
    const { pipeline: pipe, readOnly, layout, dynamicUniform } = this.pipelines.get(k.file, entry, k.defines ?? {}, key);
    this.handle.dryrun?.kernel(k.file, entry, k.defines ?? {}, k.uniforms, k.bindings.map((t) => t.byteLength));
    if (this.uniformCount >= MAX_BATCH || this.profiler?.full) this.flush();
    const entries: BindEntry[] = [];
    let slot = -1;
    if (k.uniforms) {
      slot = this.uniformCount++;
      const dv = new DataView(this.uniformHost, slot * UNIFORM_SLOT, UNIFORM_SLOT);
      k.uniforms.forEach((u, i) => {
        if (typeof u === 'number') dv.setUint32(i * 4, u, true);
        else if ('i32' in u) dv.setInt32(i * 4, u.i32, true);
        else dv.setFloat32(i * 4, u.f32, true);
      });
      // a dynamic offset picks the slot at setBindGroup, so the bind group is the same for every slot
      entries.push({ binding: 0, buffer: this.uniformBuf, id: 0, offset: dynamicUniform ? 0 : slot * UNIFORM_SLOT, size: Math.max(16, Math.ceil(k.uniforms.length / 4) * 16) });
    }
    // Storage bindings need 256-byte-aligned offsets: bind an aligned copy of a misaligned view, and
    // copy it back after the dispatch when the shader may write it (read_write binding).
    const temps: { view: Tensor; copy: Tensor; writeBack: boolean }[] = [];
    k.bindings.forEach((t, i) => {
      let b = t;
      if (t.byteOffset % 256 !== 0) {
        b = this.copy(t);
        temps.push({ view: t, copy: b, writeBack: !readOnly.has(i + 1) });
      }
      entries.push({ binding: i + 1, buffer: b.storage.pooled.buffer, id: b.storage.pooled.id, offset: b.byteOffset, size: Math.max(4, b.byteLength) });
    });
    const bg = this.bindGroups.get(key, layout, entries);
    const timestampWrites = this.profiler?.passTimestamps(key);
    if (timestampWrites) this.endPass();
    const pass = timestampWrites ? this.enc().beginComputePass({ timestampWrites, label: key }) : this.beginPass();
    if (pass !== this.pass || this.passPipeline !== pipe) pass.setPipeline(pipe);
    this.passPipeline = timestampWrites ? null : pipe;
    if (dynamicUniform && slot >= 0) {
      this.dynOffset[0] = slot * UNIFORM_SLOT;
      pass.setBindGroup(0, bg, this.dynOffset);
    } else pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(x, y, z);
    if (timestampWrites) pass.end();
    this.pending++;
    this.dispatchCount++;
    this.fileCounts.set(k.file, (this.fileCounts.get(k.file) ?? 0) + 1);
    for (const t of temps) {
      if (t.writeBack) this.copyInto(t.copy, t.view);
      t.copy.dispose();
    }
  }

  /** Contiguous copy of a tensor (same dtype), e.g. to realign a view for binding. */
  copy(src: Tensor, label = src.label): Tensor {
    src.assertAlive();
    const out = this.empty(src.shape, src.dtype, label);
    this.copyInto(src, out);
    return out;
  }

  copyInto(src: Tensor, dst: Tensor, dstByteOffset = 0): void {
    src.assertAlive();
    dst.assertAlive();
    const n = src.byteLength;
    if (dstByteOffset < 0 || dstByteOffset + n > dst.byteLength)
      fail(`copyInto: ${src.toString()} (${n} bytes) does not fit ${dst.toString()} (${dst.byteLength} bytes) at byte ${dstByteOffset}`);
    if ((dst.byteOffset + dstByteOffset) % 4 || src.byteOffset % 4)
      fail(`copyInto: byte offsets must be multiples of 4 (src ${src.byteOffset}, dst ${dst.byteOffset + dstByteOffset})`);
    this.endPass();
    this.enc().copyBufferToBuffer(src.storage.pooled.buffer, src.byteOffset, dst.storage.pooled.buffer, dst.byteOffset + dstByteOffset, n);
    this.pending++;
  }

  private enc(): GPUCommandEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder({ label: 'step1x batch' });
    return this.encoder;
  }
  private beginPass(): GPUComputePassEncoder {
    if (!this.pass) {
      this.pass = this.enc().beginComputePass();
      this.passPipeline = null;
    }
    return this.pass;
  }
  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /**
   * pipelineKey() sorts the defines (≈ 10 µs for a GEMM's dozen): memoised by the defines in the order
   * the op wrote them, which is the same on every call of an op.
   */
  private keyOf(file: string, entry: string, defines: Defines | undefined): string {
    let raw = `${file}:${entry}`;
    if (defines) for (const d in defines) raw += `,${d}=${defines[d]}`;
    let key = this.keyMemo.get(raw);
    if (key === undefined) {
      key = pipelineKey(file, entry, defines ?? {});
      this.keyMemo.set(raw, key);
    }
    return key;
  }

  /** Submit everything recorded so far. */
  flush(): void {
    if (this.handle.pendingError || this.handle.lostError) {
      // The batch recorded since the error is built on an invalid object (a pipeline whose WGSL did not
      // compile, a bad binding); submitting it would only raise the next error. Drop it and report.
      this.discardBatch();
      this.throwPending();
    }
    if (!this.encoder) {
      this.pool.collect();
      return;
    }
    this.endPass();
    if (this.uniformCount) this.device.queue.writeBuffer(this.uniformBuf, 0, this.uniformHost, 0, this.uniformCount * UNIFORM_SLOT);
    const afterSubmit = this.profiler?.beforeSubmit(this.encoder);
    this.device.queue.submit([this.encoder.finish()]);
    afterSubmit?.();
    this.track();
    this.encoder = null;
    this.uniformCount = 0;
    this.pending = 0;
    this.pool.collect();
    this.throwPending();
  }

  /** Remember the submit's completion for `pace()` (the dry run models the bound itself). */
  private track(): void {
    if (this.handle.dryrun) return;
    const p = this.device.queue.onSubmittedWorkDone().catch(() => undefined);
    this.inFlight.push(p);
    void p.then(() => {
      const i = this.inFlight.indexOf(p);
      if (i >= 0) this.inFlight.splice(0, i + 1); // completion is in order: older ones are done too
    });
  }

  /**
   * Backpressure: wait until at most `maxInFlight` submits are unfinished. Loops that record a lot of
   * work between awaits (the DiT blocks) call it, so that the host does not encode a whole step ahead:
   * every submit in flight holds the buffers it uses, and Dawn frees a destroyed buffer only after them.
   */
  async pace(): Promise<void> {
    while (this.inFlight.length > this.maxInFlight) await this.inFlight[0];
  }

  /** Bind groups created and reused so far (benchmarks, tests). */
  get bindGroupStats(): { created: number; reused: number; cached: number } {
    return { created: this.bindGroups.misses, reused: this.bindGroups.hits, cached: this.bindGroups.size };
  }

  private discardBatch(): void {
    try {
      this.pass?.end();
    } catch {
      /* the pass may already be invalid */
    }
    this.pass = null;
    this.encoder = null;
    this.uniformCount = 0;
    this.pending = 0;
    this.pool.collect();
    this.profiler?.discard();
  }

  /** Wait until the GPU has finished all submitted work; surfaces GPU errors. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPending();
  }

  private throwPending(): void {
    if (this.handle.lostError) throw this.handle.lostError;
    const e = this.handle.pendingError;
    if (e) {
      this.handle.pendingError = null;
      throw e;
    }
  }

  async readBytes(t: Tensor): Promise<Uint8Array> {
    t.assertAlive();
    const n = t.byteLength;
    // one staging buffer, reused while it is large enough (a new one per read would be a buffer
    // creation per sampler step); reads are awaited one at a time by their callers
    const size = Math.max(256, Math.ceil(n / 256) * 256);
    let staging: GPUBuffer;
    // a concurrent read, or a large one (traces), gets a buffer of its own
    const owned = !this.stagingBusy && size <= 64 << 20;
    if (owned) {
      if (this.staging && this.staging.size < size) {
        this.staging.destroy();
        this.staging = null;
      }
      staging = this.staging ??= this.device.createBuffer({ size, usage: 0x1 /* MAP_READ */ | 0x8 /* COPY_DST */, label: 'readback' });
      this.stagingBusy = true;
    } else staging = this.device.createBuffer({ size, usage: 0x1 /* MAP_READ */ | 0x8 /* COPY_DST */, label: 'readback' });
    try {
      this.endPass();
      this.enc().copyBufferToBuffer(t.storage.pooled.buffer, t.byteOffset, staging, 0, n);
      this.pending++;
      this.flush();
      try {
        await staging.mapAsync(0x1);
      } catch (e) {
        this.throwPending();
        throw new Step1xError(`GPU readback of ${t.toString()} failed: ${(e as Error).message}`, ExitCode.GPU);
      }
      this.throwPending();
      const copy = new Uint8Array(staging.getMappedRange(0, n).slice(0));
      staging.unmap();
      return copy;
    } finally {
      if (owned) this.stagingBusy = false;
      else staging.destroy();
    }
  }

  /** Host copy: f32 for float dtypes (bf16/f16 widened), Int32Array / Uint32Array for integers. */
  async read(t: Tensor): Promise<Float32Array | Int32Array | Uint32Array> {
    const bytes = await this.readBytes(t);
    switch (t.dtype) {
      case 'f32':
        return new Float32Array(bytes.buffer, 0, t.numel);
      case 'i32':
        return new Int32Array(bytes.buffer, 0, t.numel);
      case 'u32':
        return new Uint32Array(bytes.buffer, 0, t.numel);
      case 'bf16':
        return bf16ArrayToF32(new Uint16Array(bytes.buffer, 0, t.numel));
      case 'f16':
        return f16ArrayToF32(new Uint16Array(bytes.buffer, 0, t.numel));
    }
  }

  async readF32(t: Tensor): Promise<Float32Array> {
    const r = await this.read(t);
    return r instanceof Float32Array ? r : Float32Array.from(r);
  }

  // ---- profiling ----------------------------------------------------------------------------------

  /**
   * Start recording time per pipeline key (also on with STEP1X_PROFILE=1). GPU timestamps when the
   * device has 'timestamp-query' (`cpuOnly` forces the CPU fallback: wall time per flush).
   */
  enableProfiling(opts: { cpuOnly?: boolean } = {}): void {
    if (this.profiler) return;
    this.flush();
    this.profiler = new Profiler(this.device, !opts.cpuOnly && this.hasFeature('timestamp-query'));
  }

  /** Stop profiling and drop its measurements. */
  disableProfiling(): void {
    if (!this.profiler) return;
    this.flush();
    this.profiler.destroy();
    this.profiler = null;
  }

  get profiling(): boolean {
    return this.profiler !== null;
  }

  /**
   * Waits for all submitted work and returns the table (key, count, total ms, mean µs) sorted by total
   * time; `print` also writes it to stderr, `reset` clears the counters afterwards.
   */
  async profileReport(opts: { print?: boolean; reset?: boolean } = {}): Promise<ProfileReport> {
    if (!this.profiler) {
      const note = 'profiling is off: set STEP1X_PROFILE=1 or call gpu.enableProfiling()';
      return { mode: 'off', rows: [], note, text: note };
    }
    await this.sync();
    await this.profiler.settle();
    const r = this.profiler.report();
    if (opts.print) process.stderr.write(r.text + '\n');
    if (opts.reset) this.profiler.reset();
    return r;
  }

  /** Destroy the device so Node can exit; the object is unusable afterwards. */
  destroy(): void {
    // STEP1X_PROFILE=1 without an explicit report: print what has been measured (settled readbacks).
    if (this.profiler && process.env.STEP1X_PROFILE === '1') process.stderr.write(this.profiler.report().text + '\n');
    const log = process.env.STEP1X_DISPATCH_LOG;
    if (log && this.fileCounts.size) {
      try {
        appendFileSync(log, JSON.stringify({ kernels: this.kernels, precision: this.precision, files: Object.fromEntries(this.fileCounts) }) + '\n');
      } catch {
        /* a log that cannot be written must not fail the command; the CI guard then fails instead */
      }
    }
    try {
      this.pass?.end();
    } catch {
      /* ignore */
    }
    this.encoder = null;
    this.pass = null;
    this.pool.trim();
    this.pool.collect();
    this.bindGroups.clear();
    this.staging?.destroy();
    this.staging = null;
    this.uniformBuf.destroy();
    this.profiler?.destroy();
    this.profiler = null;
    this.device.destroy();
    const i = live.indexOf(this);
    if (i >= 0) live.splice(i, 1);
  }
}

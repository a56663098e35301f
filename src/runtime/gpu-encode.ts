/**
 * The batched command encoder under Gpu (runtime/gpu.ts): the device's fields and limits, tensor scopes,
 * and recording — pipelines, `dispatch` (uniform slots, binding checks, cached bind groups, realigned
 * views), copies, `flush` (one submit per batch), `flushIfDue` (a submit once enough work is queued)
 * and `pace` (backpressure on the submits in flight).
 * Allocation, readback and profiling are Gpu's own (gpu.ts); `empty` is declared here for the copies.
 *
 * Kernel binding convention (every shader follows it):
 *   @group(0) @binding(0) var<uniform> U : Params;     // when `uniforms` is given: 4-byte scalars in order
 *                                                      // (runtime/uniforms.ts names them per kernel)
 *   @group(0) @binding(1..n) var<storage, ...>         // `bindings[0..n-1]`, in order
 * Dispatches are recorded into one compute pass and submitted in batches; WebGPU orders dispatches,
 * so each sees the previous one's writes.
 */
import { describeAdapter, type DeviceHandle, type AdapterDescription } from './device.js';
import { BufferPool } from './buffer-pool.js';
import type { DType, Tensor } from './tensor.js';
import type { Profiler } from './profiler.js';
import { pipelineKey, type Defines } from './shader-source.js';
import { PipelineCache } from './pipeline-cache.js';
import { BindGroupCache, type BindEntry } from './bind-cache.js';
import { fail } from '../errors.js';
import type { Capabilities, KernelFamily, Precision } from './caps.js';
import type { Recorder } from './dryrun/recorder.js';
import { ScopeStack } from './scope.js';
import { structMismatch, type Uniforms } from './uniforms.js';
import type { Gpu } from './gpu.js';

export { f32u, i32u, type Uniform, type Uniforms } from './uniforms.js';

export interface Kernel {
  file: string;
  entry?: string;
  defines?: Defines;
  /** The Params block: a UniformStruct's (runtime/uniforms.ts), or scalars in order (test shaders). */
  uniforms?: Uniforms;
  bindings: Tensor[];
  workgroups: [number, number?, number?];
}

const UNIFORM_SLOT = 256;
const MAX_BATCH = 256;
/** Submits the GPU may be behind before `pace()` waits (STEP1X_MAX_INFLIGHT overrides). */
const MAX_IN_FLIGHT = 2;
/**
 * Queued work at which `flushIfDue` submits: bytes bound since the last submit (the dry run's bound_bytes)
 * or commands. A real-size DiT block binds several GB: one submit; a generated token's layer (M = 1) binds
 * ≈ 0.47 GB of bf16 weights: ≈ 3 layers a submit. 1 GiB is 0.3 ms at 3.35 TB/s (2.7 ms at 400 GB/s), far
 * above a submit's host cost; 128 commands start the GPU early on a long chain of small dispatches.
 */
const SUBMIT_BYTES = 2 ** 30;
const SUBMIT_COMMANDS = 128;

/** Recording and submitting: the part of Gpu below allocation, readback and profiling. */
export abstract class GpuEncoder {
  readonly device: GPUDevice;
  readonly pool: BufferPool;
  /** Open tensor scopes (runtime/scope.ts): every Tensor made on this runtime is tracked by the innermost. */
  readonly scopes = new ScopeStack();
  protected readonly pipelines: PipelineCache;
  protected profiler: Profiler | null = null;
  protected encoder: GPUCommandEncoder | null = null;
  protected pass: GPUComputePassEncoder | null = null;
  private uniformHost = new ArrayBuffer(UNIFORM_SLOT * MAX_BATCH);
  private uniformCount = 0;
  protected uniformBuf: GPUBuffer;
  protected pending = 0;
  /** Bytes bound by the commands recorded since the last submit (flushIfDue). */
  private pendingBytes = 0;
  /** Queued work at which flushIfDue submits (tests lower them). */
  submitBytes = SUBMIT_BYTES;
  submitCommands = SUBMIT_COMMANDS;
  private passPipeline: GPUComputePipeline | null = null;
  private readonly keyMemo = new Map<string, string>();
  private readonly dynOffset = [0];
  protected readonly bindGroups: BindGroupCache;
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
  /** Messages this runtime has said once already (fallback warnings: one line per device and op). */
  readonly saidOnce = new Set<string>();
  /** Storage of the activations ops create now (ops/act-dtype.ts withActivations sets it around a DiT step). */
  activations: 'f32' | 'f16' = 'f32';
  /** Steps redone with f32 activation storage after an f16 overflow (ops/act-dtype.ts withF16Redo). */
  f16Redos = 0;

  protected constructor(
    readonly handle: DeviceHandle,
    /** Installs the tuned GEMM tiles (GpuOptions.tiles). */
    readonly tiles?: (g: Gpu) => void,
  ) {
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
  /** Byte alignment of storage binding offsets (minStorageBufferOffsetAlignment: 16, 32 or 256). */
  get storageAlign(): number {
    return this.handle.storageAlign;
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
  /** Whether the family was named (--kernels / STEP1X_KERNELS) rather than chosen by auto. */
  get kernelsForced(): boolean {
    return this.handle.requestedKernels !== 'auto';
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

  /** A new tensor of this runtime (Gpu.empty): copies that realign a view for binding make one. */
  abstract empty(shape: readonly number[], dtype?: DType, label?: string): Tensor;

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
      if (typeof u === 'number' && (!Number.isInteger(u) || u < 0 || u > 0xffffffff)) fail(`${k.file}: uniform ${k.uniforms!.struct?.names[i] ?? i} = ${u} is not a u32`);
    });
    const mismatch = k.uniforms && structMismatch(k.uniforms, k.file, k.defines);
    if (mismatch) fail(`${k.file}: ${mismatch}`);
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
    // Storage bindings need aligned offsets (storageAlign): bind an aligned copy of a misaligned view, and
    // copy it back after the dispatch when the shader may write it (read_write binding).
    const temps: { view: Tensor; copy: Tensor; writeBack: boolean }[] = [];
    const align = this.handle.storageAlign;
    k.bindings.forEach((t, i) => {
      let b = t;
      if (t.byteOffset % align !== 0) {
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
    for (const t of k.bindings) this.pendingBytes += t.byteLength;
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
    this.pendingBytes += 2 * n;
  }

  protected enc(): GPUCommandEncoder {
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
  protected endPass(): void {
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
    this.pendingBytes = 0;
    this.pool.collect();
    this.throwPending();
  }

  /**
   * Submit once the queued work is due (submitBytes, submitCommands), or when freed buffers wait for a
   * submit to be destroyed (their memory is held until then). scan (nn/chain.ts) calls it after each step.
   */
  flushIfDue(): void {
    if (this.pending >= this.submitCommands || this.pendingBytes >= this.submitBytes || this.pool.destroyPending > 0) this.flush();
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
    this.pendingBytes = 0;
    this.pool.collect();
    this.profiler?.discard();
  }

  protected throwPending(): void {
    if (this.handle.lostError) throw this.handle.lostError;
    const e = this.handle.pendingError;
    if (e) {
      this.handle.pendingError = null;
      throw e;
    }
  }
}

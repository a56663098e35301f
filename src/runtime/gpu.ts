/**
 * Gpu: the runtime object. Owns the device, the buffer pool, the pipeline cache and the batched
 * command encoder (runtime/gpu-encode.ts: dispatch, copies, flush, backpressure). Ops call
 * `gpu.dispatch(kernel)`; models only see Tensors. Here: creation with the run's settings, allocation
 * and uploads, readback and sync, profiling, destroy. `read()` is the only await in a hot path.
 */
import { createDevice, type DeviceOptions } from './device.js';
import { Storage, Tensor, type DType, DTYPE_BYTES, numelOf, storageBytes } from './tensor.js';
import { Profiler, type ProfileReport } from './profiler.js';
import { bf16ArrayToF32, f16ArrayToF32 } from './half.js';
import { ExitCode, GpuOutOfMemory, Step1xError, fail, fmtShape } from '../errors.js';
import { appendFileSync } from 'node:fs';
import { GpuEncoder } from './gpu-encode.js';
import { Uploader, type Fill, type UploadMode } from './upload-ring.js';

export { f32u, i32u, type Kernel, type Uniform } from './gpu-encode.js';

export type HostData = Float32Array | Int32Array | Uint32Array | Uint16Array;

/**
 * Gpu.create options: the device's (DeviceOptions: kernel family, precision, binding cap, Dawn flags) and
 * where this run's tuned GEMM tiles come from (`tiles`: ops/tune.ts `tuneCacheTiles`, which the CLI passes;
 * without it the plans use their default tiles). Everything a run decides is carried by its Gpu.
 */
export interface GpuOptions extends DeviceOptions {
  /** Installs the device's tuned tiles; called once, at the first GEMM plan (ops/plan-gemm.ts). */
  tiles?: (g: Gpu) => void;
  /**
   * How streamed weight loads reach GPU buffers (runtime/upload-ring.ts): 'ring' (read into mapped staging)
   * or 'write' (queue.writeBuffer); default STEP1X_UPLOAD, else 'write' on CPU adapters (measured faster
   * there) and 'ring' on others (one host copy fewer; faster on Dawn's Null backend, unmeasured on a GPU).
   */
  upload?: UploadMode;
}

/** STEP1X_UPLOAD=ring|write (like STEP1X_KERNELS: the CLI's way to override the default without a flag). */
function envUpload(): UploadMode | undefined {
  const v = process.env.STEP1X_UPLOAD;
  if (v === undefined || v === '') return undefined;
  if (v !== 'ring' && v !== 'write') throw new Step1xError(`STEP1X_UPLOAD must be 'ring' or 'write', got '${v}'`, ExitCode.USAGE);
  return v;
}

export class Gpu extends GpuEncoder {
  private staging: GPUBuffer | null = null;
  private stagingBusy = false;
  private uploader: Uploader | null = null;
  /** How streamed loads reach GPU buffers (GpuOptions.upload). */
  uploadMode: UploadMode = 'ring';

  static async create(opts: GpuOptions = {}): Promise<Gpu> {
    const upload = opts.upload ?? envUpload(); // a bad value fails before a device exists
    const g = new Gpu(await createDevice(opts), opts.tiles);
    g.uploadMode = upload ?? (g.caps.cpu ? 'write' : 'ring');
    if (process.env.STEP1X_PROFILE === '1') g.enableProfiling();
    return g;
  }

  // ---- allocation -------------------------------------------------------------------------------

  empty(shape: readonly number[], dtype: DType = 'f32', label = ''): Tensor {
    const bytes = storageBytes(dtype, numelOf(shape));
    let pb;
    try {
      pb = this.pool.acquire(bytes, label);
    } catch (e) {
      throw new GpuOutOfMemory(`cannot allocate ${label || 'tensor'} [${shape}]: ${(e as Error).message}`);
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
    if (thrown || !pb) throw new GpuOutOfMemory(`cannot allocate ${what}: ${(thrown as Error).message}`);
    const err = oom ?? validation;
    if (err) {
      this.pool.discard(pb);
      throw new GpuOutOfMemory(
        `out of GPU memory allocating ${what}: ${err.message.split('\n')[0]}. ` +
          'Lower --vram-budget so that weights are streamed, or use a smaller --size',
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

  /**
   * The streamed-load uploader (runtime/upload-ring.ts). 'write': 4 MiB pieces, the size of Dawn's upload
   * ring buffers (a larger writeBuffer gets a fresh staging buffer of its own); 'ring': 4 slots of 8 MiB.
   */
  get uploads(): Uploader {
    return (this.uploader ??= new Uploader(this.device, this.uploadMode, this.uploadMode === 'write' ? 4 << 20 : 8 << 20, 4));
  }

  /**
   * Write `n` bytes at `byteOffset` of `t`, produced by `fill` piece by piece (at most `uploads.chunkBytes`
   * each; `at` is the piece's offset within the n bytes) straight into upload memory: a file read lands in
   * mapped staging ('ring') or a reused host buffer ('write'). Resolves once the last piece is queued; waits
   * while the uploader's pieces in flight are at their bound (the load's backpressure). Same bounds and
   * ordering rules as writeBytes; what follows may overwrite the source as soon as it resolves.
   */
  async writeVia(t: Tensor, byteOffset: number, n: number, fill: Fill): Promise<void> {
    this.checkWrite('writeVia', t, byteOffset, n);
    const before = () => {
      t.assertAlive();
      if (this.pending) this.flush();
    };
    const w0 = this.uploads.writes, b0 = this.uploads.bytes;
    await this.uploads.stream(t.storage.pooled.buffer, t.byteOffset + byteOffset, n, fill, before);
    this.uploadCount += this.uploads.writes - w0;
    this.uploadBytes += this.uploads.bytes - b0;
  }

  /** writeVia of host bytes (a reused buffer: copied or queued before this resolves). */
  async writeStreamed(t: Tensor, byteOffset: number, bytes: Uint8Array): Promise<void> {
    this.checkWrite('writeStreamed', t, byteOffset, bytes.byteLength);
    const w0 = this.uploads.writes, b0 = this.uploads.bytes;
    await this.uploads.write(t.storage.pooled.buffer, t.byteOffset + byteOffset, bytes, () => {
      t.assertAlive();
      if (this.pending) this.flush();
    });
    this.uploadCount += this.uploads.writes - w0;
    this.uploadBytes += this.uploads.bytes - b0;
  }

  private checkWrite(what: string, t: Tensor, byteOffset: number, n: number): void {
    t.assertAlive();
    const room = t.storage.bytes - t.byteOffset;
    if (byteOffset % 4 || byteOffset < 0 || byteOffset + n > Math.min(room, Math.ceil(t.byteLength / 4) * 4))
      fail(`${what}: ${n} bytes at byte ${byteOffset} do not fit ${t.toString()} (${t.byteLength} bytes, offsets in whole words)`);
    if (n % 4 && t.byteOffset + byteOffset + n < t.storage.bytes)
      fail(`${what}: ${n} bytes (not whole words) end inside ${t.toString()}'s storage, the pad would overwrite the next element`);
  }

  // ---- readback and sync ------------------------------------------------------------------------

  /** Wait until the GPU has finished all submitted work; surfaces GPU errors. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPending();
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
    this.uploader?.destroy();
    this.uploader = null;
    this.uniformBuf.destroy();
    this.profiler?.destroy();
    this.profiler = null;
    this.device.destroy();
  }
}

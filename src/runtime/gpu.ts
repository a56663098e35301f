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
import { Storage, Tensor, type DType, numelOf, storageBytes } from './tensor.js';
import { preprocess, pipelineKey, type Defines } from './shader-source.js';
import { bf16ArrayToF32, f16ArrayToF32 } from './half.js';
import { ExitCode, Step1xError, fail } from '../errors.js';

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

let active: Gpu | null = null;

export class Gpu {
  readonly device: GPUDevice;
  readonly pool: BufferPool;
  private pipelines = new Map<string, GPUComputePipeline>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private uniformHost = new ArrayBuffer(UNIFORM_SLOT * MAX_BATCH);
  private uniformCount = 0;
  private uniformBuf: GPUBuffer;
  private pending = 0;
  /** Number of dispatches recorded since creation (benchmarks, tests). */
  dispatchCount = 0;

  private constructor(readonly handle: DeviceHandle) {
    this.device = handle.device;
    this.pool = new BufferPool(this.device, handle.maxBufferBytes);
    this.uniformBuf = this.device.createBuffer({
      size: UNIFORM_SLOT * MAX_BATCH,
      usage: 0x40 /* UNIFORM */ | 0x8 /* COPY_DST */,
      label: 'uniforms',
    });
  }

  static async create(opts: DeviceOptions = {}): Promise<Gpu> {
    const g = new Gpu(await createDevice(opts));
    active = g;
    return g;
  }

  /** The most recently created, not yet destroyed runtime. */
  static current(): Gpu {
    if (!active) fail('no GPU runtime: call Gpu.create() first');
    return active;
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
  hasFeature(f: string): boolean {
    return this.handle.features.has(f);
  }
  describe(): AdapterDescription {
    return describeAdapter(this.handle.adapter);
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
    return new Tensor(new Storage(this, pb), shape, dtype, 0, label);
  }

  upload(data: HostData, shape: readonly number[], dtype: DType = 'f32', label = ''): Tensor {
    const n = numelOf(shape);
    const expectLen = dtype === 'bf16' || dtype === 'f16' ? n : n;
    if (data.length !== expectLen) fail(`upload ${label}: ${data.length} values for shape [${shape}]`);
    const t = this.empty(shape, dtype, label);
    this.writeInto(t, data);
    return t;
  }

  /** Overwrite a tensor's contents from the host (flushes pending work first: the buffer may be reused). */
  writeInto(t: Tensor, data: HostData): void {
    if (this.pending) this.flush();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded = bytes.byteLength % 4 ? (() => {
      const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      p.set(bytes);
      return p;
    })() : bytes;
    this.device.queue.writeBuffer(t.storage.pooled.buffer, t.byteOffset, padded as Uint8Array<ArrayBuffer>);
  }

  // ---- pipelines and dispatch ---------------------------------------------------------------------

  pipeline(file: string, entry = 'main', defines: Defines = {}): GPUComputePipeline {
    const key = pipelineKey(file, entry, defines);
    let p = this.pipelines.get(key);
    if (!p) {
      const code = preprocess(file, defines);
      const module = this.device.createShaderModule({ code, label: key });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
      this.pipelines.set(key, p);
    }
    return p;
  }

  dispatch(k: Kernel): void {
    const [x, y = 1, z = 1] = k.workgroups;
    const maxWg = this.handle.maxWorkgroupsPerDim;
    if (x > maxWg || y > maxWg || z > maxWg)
      fail(`${k.file}: dispatch [${x},${y},${z}] exceeds maxComputeWorkgroupsPerDimension ${maxWg}`);
    if (x === 0 || y === 0 || z === 0) return;
    const pipe = this.pipeline(k.file, k.entry ?? 'main', k.defines ?? {});
    if (this.uniformCount >= MAX_BATCH) this.flush();
    const entries: GPUBindGroupEntry[] = [];
    if (k.uniforms) {
      const slot = this.uniformCount++;
      const dv = new DataView(this.uniformHost, slot * UNIFORM_SLOT, UNIFORM_SLOT);
      if (k.uniforms.length * 4 > UNIFORM_SLOT) fail(`${k.file}: too many uniforms`);
      k.uniforms.forEach((u, i) => {
        if (typeof u === 'number') {
          if (!Number.isInteger(u) || u < 0 || u > 0xffffffff) fail(`${k.file}: uniform ${i} = ${u} is not a u32`);
          dv.setUint32(i * 4, u, true);
        } else if ('i32' in u) dv.setInt32(i * 4, u.i32, true);
        else dv.setFloat32(i * 4, u.f32, true);
      });
      entries.push({ binding: 0, resource: { buffer: this.uniformBuf, offset: slot * UNIFORM_SLOT, size: Math.max(16, Math.ceil(k.uniforms.length / 4) * 16) } });
    }
    const temps: Tensor[] = [];
    k.bindings.forEach((t, i) => {
      t.assertAlive();
      let b = t;
      if (t.byteOffset % 256 !== 0) {
        b = this.copy(t);
        temps.push(b);
      }
      if (b.byteLength > this.handle.maxBindingBytes)
        fail(`${k.file}: binding ${i + 1} ${t.toString()} is ${b.byteLength} bytes, over the device's binding limit ${this.handle.maxBindingBytes}`);
      entries.push({ binding: i + 1, resource: { buffer: b.storage.pooled.buffer, offset: b.byteOffset, size: Math.max(4, b.byteLength) } });
    });
    const bg = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
    const pass = this.beginPass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(x, y, z);
    this.pending++;
    this.dispatchCount++;
    for (const t of temps) t.dispose();
  }

  /** Contiguous copy of a tensor (same dtype), e.g. to realign a view for binding. */
  copy(src: Tensor, label = src.label): Tensor {
    const out = this.empty(src.shape, src.dtype, label);
    this.copyInto(src, out);
    return out;
  }

  copyInto(src: Tensor, dst: Tensor, dstByteOffset = 0): void {
    src.assertAlive();
    dst.assertAlive();
    const n = src.byteLength;
    if (dst.byteOffset + dstByteOffset + n > dst.storage.pooled.size) fail('copyInto: destination too small');
    this.endPass();
    this.enc().copyBufferToBuffer(src.storage.pooled.buffer, src.byteOffset, dst.storage.pooled.buffer, dst.byteOffset + dstByteOffset, n);
    this.pending++;
  }

  private enc(): GPUCommandEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder({ label: 'step1x batch' });
    return this.encoder;
  }
  private beginPass(): GPUComputePassEncoder {
    if (!this.pass) this.pass = this.enc().beginComputePass();
    return this.pass;
  }
  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Submit everything recorded so far. */
  flush(): void {
    this.throwPending();
    if (!this.encoder) return;
    this.endPass();
    if (this.uniformCount) this.device.queue.writeBuffer(this.uniformBuf, 0, this.uniformHost, 0, this.uniformCount * UNIFORM_SLOT);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.uniformCount = 0;
    this.pending = 0;
    this.pool.collect();
  }

  /** Wait until the GPU has finished all submitted work; surfaces GPU errors. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPending();
  }

  private throwPending(): void {
    const e = this.handle.pendingError;
    if (e) {
      this.handle.pendingError = null;
      throw e;
    }
  }

  async readBytes(t: Tensor): Promise<Uint8Array> {
    t.assertAlive();
    const n = t.byteLength;
    const staging = this.device.createBuffer({ size: Math.max(4, n), usage: 0x1 /* MAP_READ */ | 0x8 /* COPY_DST */ });
    this.endPass();
    this.enc().copyBufferToBuffer(t.storage.pooled.buffer, t.byteOffset, staging, 0, n);
    this.pending++;
    this.flush();
    try {
      await staging.mapAsync(0x1);
    } catch (e) {
      this.throwPending();
      throw new Step1xError(`GPU readback failed: ${(e as Error).message}`, ExitCode.GPU);
    }
    this.throwPending();
    const copy = new Uint8Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    return copy;
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

  /** Destroy the device so Node can exit; the object is unusable afterwards. */
  destroy(): void {
    try {
      this.pass?.end();
    } catch {
      /* ignore */
    }
    this.encoder = null;
    this.pass = null;
    this.pool.trim();
    this.pool.collect();
    this.uniformBuf.destroy();
    this.device.destroy();
    if (active === this) active = null;
  }
}

/**
 * Tensor: a typed, shaped view into a pooled GPU buffer. Models hold Tensors but never the buffer.
 *
 * Storage dtypes:
 *   f32, i32, u32 — 4 bytes per element
 *   f16           — 2 bytes per element (shaders read it as array<f16> when shader-f16 exists,
 *                   otherwise as packed u32 pairs)
 *   bf16          — 2 bytes per element, kept packed two per u32 (element i is the low half of word i/2
 *                   when i is even); shaders widen with `bitcast<f32>(bits << 16)`: exact, no doubling
 * Views share storage (refcounted) and carry a byte offset; `dispose()` drops one reference.
 */
import type { Gpu } from './gpu.js';
import type { PooledBuffer } from './buffer-pool.js';
import { fail, fmtShape } from '../errors.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32';

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4 };

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) fail(`invalid tensor shape ${fmtShape(shape)}`);
    n *= d;
  }
  return n;
}

/** Bytes a tensor of `numel` elements occupies, rounded up to 4 (WGSL arrays are word-based). */
export function storageBytes(dtype: DType, numel: number): number {
  return Math.ceil((numel * DTYPE_BYTES[dtype]) / 4) * 4;
}

export class Storage {
  refs = 1;
  constructor(
    readonly gpu: Gpu,
    readonly pooled: PooledBuffer,
    /** Bytes the tensor it was made for holds (numel × element size, unpadded); the buffer may be larger. */
    readonly bytes = pooled.size,
  ) {}
  retain(): void {
    this.refs++;
  }
  release(): void {
    if (--this.refs === 0) this.gpu.pool.release(this.pooled);
    if (this.refs < 0) fail('tensor storage released twice');
  }
}

export class Tensor {
  private disposed = false;
  readonly numel: number;

  constructor(
    readonly storage: Storage,
    readonly shape: readonly number[],
    readonly dtype: DType,
    /** Byte offset into the storage buffer. */
    readonly byteOffset = 0,
    readonly label = '',
  ) {
    this.numel = numelOf(shape);
    storage.gpu.scopes?.track(this); // runtime/scope.ts: owned by the innermost open scope, if any
  }

  get gpu(): Gpu {
    return this.storage.gpu;
  }
  get rank(): number {
    return this.shape.length;
  }
  /** Bytes of this view, rounded up to a whole word. */
  get byteLength(): number {
    return storageBytes(this.dtype, this.numel);
  }
  get isDisposed(): boolean {
    return this.disposed;
  }

  dim(i: number): number {
    return this.shape[i < 0 ? this.shape.length + i : i];
  }

  /** Same storage, new shape (element count must match). */
  reshape(shape: readonly number[]): Tensor {
    this.assertAlive();
    let s = [...shape];
    const neg = s.indexOf(-1);
    if (neg >= 0) {
      const rest = numelOf(s.filter((_, i) => i !== neg));
      s[neg] = rest === 0 ? 0 : this.numel / rest;
    }
    if (numelOf(s) !== this.numel) fail(`reshape: cannot view ${fmtShape(this.shape)} as ${fmtShape(shape)}`);
    this.storage.retain();
    return new Tensor(this.storage, s, this.dtype, this.byteOffset, this.label);
  }

  /**
   * Contiguous sub-range along dim 0: rows [start, start+count). Shares storage.
   * Bindings need offsets on the device's storage alignment (16–256 bytes); the runtime copies a misaligned
   * view when it is bound (runtime/window.ts makes aligned windows for kernels that take element offsets).
   */
  rows(start: number, count: number): Tensor {
    this.assertAlive();
    if (this.rank === 0) fail(`rows(${start}, ${count}) of a scalar tensor (shape [])`);
    if (start < 0 || count < 0 || start + count > this.shape[0])
      fail(`rows(${start}, ${count}) out of range for shape ${fmtShape(this.shape)}`);
    const rowElems = this.numel / (this.shape[0] || 1);
    const off = start * rowElems * DTYPE_BYTES[this.dtype];
    if (off % 4 !== 0) fail(`rows(${start}) of a ${this.dtype} tensor must start on a 4-byte boundary`);
    this.storage.retain();
    return new Tensor(this.storage, [count, ...this.shape.slice(1)], this.dtype, this.byteOffset + off, this.label);
  }

  assertAlive(): void {
    if (this.disposed) fail(`tensor ${this.label || fmtShape(this.shape)} used after dispose()`);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.storage.release();
  }

  /** Read back to the host as f32 (bf16/f16 widened) or Int32/Uint32. */
  async read(): Promise<Float32Array | Int32Array | Uint32Array> {
    return this.gpu.read(this);
  }

  toString(): string {
    return `Tensor(${this.dtype}${fmtShape(this.shape)}${this.label ? ' ' + this.label : ''})`;
  }
}

export type Shape = readonly number[];

export function assertShape(name: string, t: Tensor, expected: readonly (number | null)[]): void {
  const ok = t.rank === expected.length && expected.every((e, i) => e === null || e === t.shape[i]);
  if (!ok)
    fail(
      `${name}: expected shape ${fmtShape(expected.map((e) => (e === null ? -1 : e)))} (-1 = any), got ${fmtShape(t.shape)}`,
    );
}

export function assertDtype(name: string, t: Tensor, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) fail(`${name}: dtype ${t.dtype} not supported (expected ${allowed.join('/')})`);
}

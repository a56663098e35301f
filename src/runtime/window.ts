/**
 * Binding windows. A storage binding must start on the device's `minStorageBufferOffsetAlignment` (16 on
 * lavapipe and Apple, 32 on NVIDIA, 256 on Intel Xe2: src/runtime/dryrun/profiles.ts); kernels that take
 * element offsets in their uniforms bind the window of a tensor from the aligned byte at or below the
 * range's first element, and read from `off` elements into it. Conv blocks, GEMM chunks, qk-norm-rope token
 * chunks and the row chunks of layout / norm / cast all use these, so a range needs no copy to be bound.
 */
import { Tensor, DTYPE_BYTES, storageBytes, type DType } from './tensor.js';
import { fail } from '../errors.js';

/** Elements [e0, e0 + count) of a tensor, bound from `start` (an element of the tensor): e0 is `off` in. */
export interface WindowSpan {
  start: number;
  off: number;
  /** Bytes the binding covers (alignment slop included, rounded up to a word). */
  bytes: number;
}

/**
 * The window of elements [e0, e0 + count) of a view at `byteOffset` in its buffer, for `align`-byte binding
 * offsets. It never starts before the view (a view that itself starts misaligned is bound from its start,
 * and the runtime copies it: src/runtime/gpu-encode.ts), so windows of different views of one buffer
 * overlap only where the views do.
 */
export function windowSpan(byteOffset: number, dtype: DType, e0: number, count: number, align: number): WindowSpan {
  const eb = DTYPE_BYTES[dtype];
  const slop = (byteOffset + e0 * eb) % align;
  const start = Math.max(0, e0 - Math.floor(slop / eb));
  return { start, off: e0 - start, bytes: storageBytes(dtype, e0 + count - start) };
}

/** A view of t over elements [e0, e0 + count) starting on the device's binding alignment, and e0's offset in it. */
export function bindWindow(t: Tensor, e0: number, count: number): { view: Tensor; off: number } {
  t.assertAlive();
  if (e0 < 0 || count < 0 || e0 + count > t.numel) fail(`bindWindow: elements [${e0}, ${e0 + count}) out of range for ${t.toString()}`);
  const { start, off } = windowSpan(t.byteOffset, t.dtype, e0, count, t.gpu.storageAlign);
  t.storage.retain();
  return { view: new Tensor(t.storage, [off + count], t.dtype, t.byteOffset + start * DTYPE_BYTES[t.dtype], t.label), off };
}

/** Bytes bindWindow(t, e0, count) binds. */
export const windowBytes = (t: Tensor, e0: number, count: number): number => windowSpan(t.byteOffset, t.dtype, e0, count, t.gpu.storageAlign).bytes;

/** Elements of `bytesPerElem` that surely fit one window whatever its alignment slop. */
export const windowElems = (t: Tensor, bytesPerElem: number): number => Math.floor((t.gpu.maxBindingBytes - t.gpu.storageAlign) / bytesPerElem);

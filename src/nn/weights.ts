/**
 * Bridge from a Checkpoint (host, lazy positional reads) to GPU tensors. Tensors kept as stored (and
 * 16-bit ones widened to f32) stream in 4 MiB chunks through reused buffers (nn/upload.ts); the rare
 * conversions below read one whole tensor, so host memory peaks at the largest such tensor.
 *
 *   BF16 → packed 'bf16' tensor (two per u32, shaders widen exactly) unless as: 'f32'
 *   F16  → 'f16'                                                     unless as: 'f32'
 *   F32  → 'f32'
 *   F8_E4M3, F8_E5M2 → 'bf16' (every fp8 value is a bf16 value: exact) unless as: 'f32'
 *   q8 / q4 (a `step1x convert` file) → 'f32', dequantized on the host
 *   F64, I64, I16, I8, U8, BOOL → 'f32' (converted on the host); I32 → 'i32' unless as: 'f32'
 * Linear weights load through nn/weight.ts instead (packed formats stay packed there).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { bytesToF32, numelOfShape } from '../io/safetensors.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { f32ArrayToBf16, bf16BitsToF32Into, f16BitsToF32Into } from '../runtime/half.js';
import { scratch, streamTensor } from './upload.js';

export interface LoadWeightOptions {
  /** 'native' (default) keeps bf16/f16 packed; 'f32' widens on the host. */
  as?: 'native' | 'f32';
  /** Expected shape: a mismatch is a WEIGHTS error naming the tensor and both shapes. */
  shape?: readonly number[];
}

/**
 * `g` whose new tensors belong to no tensor scope (runtime/scope.ts): weights outlive whatever forward they
 * are read in (a block streamed with read-ahead is created while some scope is open and freed by its owner).
 */
export function weightGpu(g: Gpu): Pick<Gpu, 'empty' | 'upload'> {
  return {
    empty: (shape, dtype, label) => g.untracked(() => g.empty(shape, dtype, label)),
    upload: (data, shape, dtype, label) => g.untracked(() => g.upload(data, shape, dtype, label)),
  };
}

export async function loadWeight(g: Gpu, ckpt: Checkpoint, name: string, opts: LoadWeightOptions = {}): Promise<Tensor> {
  const w = weightGpu(g);
  const info = ckpt.info(name);
  if (opts.shape && (opts.shape.length !== info.shape.length || opts.shape.some((d, i) => d !== info.shape[i])))
    throw new Step1xError(`${ckpt.path}: tensor "${name}" has shape ${fmtShape(info.shape)}, the model expects ${fmtShape(opts.shape)}`, ExitCode.WEIGHTS);
  const native = (opts.as ?? 'native') === 'native';
  if (g.isDryRun) {
    // dry run (STEP1X_DRYRUN): the buffer as it would be uploaded, nothing read from the file
    const f8 = info.dtype === 'F8_E4M3' || info.dtype === 'F8_E5M2';
    const dt = !native || info.quant ? 'f32' : info.dtype === 'BF16' || f8 ? 'bf16' : info.dtype === 'F16' ? 'f16' : info.dtype === 'I32' ? 'i32' : 'f32';
    return w.empty(info.shape, dt, name);
  }
  const n = numelOfShape(info.shape);
  // As stored, or 16-bit widened to f32: streamed in chunks (nn/upload.ts), no host copy of the tensor.
  if (!info.quant) {
    if (native && info.dtype === 'BF16') return streamTensor(g, ckpt, name, w.empty(info.shape, 'bf16', name));
    if (native && info.dtype === 'F16') return streamTensor(g, ckpt, name, w.empty(info.shape, 'f16', name));
    if (native && info.dtype === 'I32') return streamTensor(g, ckpt, name, w.empty(info.shape, 'i32', name));
    if (info.dtype === 'F32') return streamTensor(g, ckpt, name, w.empty(info.shape, 'f32', name));
    if (info.dtype === 'BF16' || info.dtype === 'F16') {
      const widen = info.dtype === 'BF16' ? bf16BitsToF32Into : f16BitsToF32Into;
      return streamTensor(g, ckpt, name, w.empty(info.shape, 'f32', name), {
        elemBytes: 2,
        outBytes: 4,
        fn: (c) => {
          const out = new Float32Array(scratch(c.byteLength * 2), 0, c.byteLength / 2);
          widen(new Uint16Array(c.buffer, c.byteOffset, c.byteLength / 2), out);
          return new Uint8Array(out.buffer, 0, out.byteLength);
        },
      });
    }
  }
  const bytes = await ckpt.readBytes(name);
  // readBytes returns a fresh buffer at offset 0, so typed views are aligned.
  if (native && info.dtype === 'BF16') return w.upload(new Uint16Array(bytes.buffer, bytes.byteOffset, n), info.shape, 'bf16', name);
  if (native && info.dtype === 'F16') return w.upload(new Uint16Array(bytes.buffer, bytes.byteOffset, n), info.shape, 'f16', name);
  if (native && info.dtype === 'I32') return w.upload(new Int32Array(bytes.buffer, bytes.byteOffset, n), info.shape, 'i32', name);
  if (info.quant) return w.upload(await ckpt.readF32(name), info.shape, 'f32', name);
  if (native && (info.dtype === 'F8_E4M3' || info.dtype === 'F8_E5M2')) return w.upload(f32ArrayToBf16(bytesToF32(ckpt.path, info, bytes)), info.shape, 'bf16', name);
  return w.upload(bytesToF32(ckpt.path, info, bytes), info.shape, 'f32', name);
}

/** Load `name` if the checkpoint has it, else undefined (optional biases). */
export async function loadOptional(g: Gpu, ckpt: Checkpoint, name: string, opts: LoadWeightOptions = {}): Promise<Tensor | undefined> {
  return ckpt.has(name) ? loadWeight(g, ckpt, name, opts) : undefined;
}

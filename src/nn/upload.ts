/**
 * Streamed weight upload: a checkpoint tensor goes to its GPU buffer through the Gpu's upload ring
 * (runtime/upload-ring.ts), never as one host copy of the whole tensor. A tensor kept as stored is read from
 * the file straight into mapped staging memory (read → staging → GPU buffer: one host copy per byte); a
 * converted one is read in chunks into reused buffers (io/chunk-reader.ts), converted, and copied into the
 * staging memory. The ring's slots are the backpressure: a load waits for the GPU's copy of an earlier slot
 * before it reuses it, so staged bytes stay bounded however large the model (no pacing state of its own).
 */
import type { Gpu } from '../runtime/gpu.js';
import { DTYPE_BYTES, type Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { LOAD_CHUNK_BYTES } from '../io/safetensors.js';

/** Write `bytes` (a reused buffer: copied into staging before this returns) into `t` at `byteOffset`. */
export function writeChunk(g: Gpu, t: Tensor, byteOffset: number, bytes: Uint8Array): Promise<void> {
  return g.writeStreamed(t, byteOffset, bytes);
}

/**
 * `name`'s bytes as stored into `t` (same byte size, e.g. BF16 → 'bf16'), read straight into staging memory;
 * or through `convert`, which maps each chunk of whole elements (`elemBytes` each) to the bytes to write; its
 * output may be a reused scratch buffer (it is copied before the next chunk is converted). The tensor is
 * disposed if the load fails.
 */
export async function streamTensor(
  g: Gpu,
  ckpt: Checkpoint,
  name: string,
  t: Tensor,
  convert?: { elemBytes: number; outBytes: number; fn: (chunk: Uint8Array) => Uint8Array },
): Promise<Tensor> {
  try {
    if (!convert) {
      const read = ckpt.tensorReader(name);
      await g.writeVia(t, 0, t.numel * DTYPE_BYTES[t.dtype], read);
      return t;
    }
    let out = 0;
    // Chunks of whole elements whose converted size is whole words (writeVia offsets).
    const unit = convert.elemBytes * Math.max(1, 4 / gcd(4, convert.outBytes));
    for await (const c of ckpt.tensorChunks(name, Math.floor(LOAD_CHUNK_BYTES / unit) * unit)) {
      const b = convert.fn(c);
      await writeChunk(g, t, out, b);
      out += b.byteLength;
    }
    return t;
  } catch (e) {
    t.dispose();
    throw e;
  }
}

function gcd(a: number, b: number): number {
  return b ? gcd(b, a % b) : a;
}

/** A reusable scratch of at least `bytes` (valid until the next call: convert-and-write sections only). */
let scratchBuf = new ArrayBuffer(0);
export function scratch(bytes: number): ArrayBuffer {
  if (scratchBuf.byteLength < bytes) scratchBuf = new ArrayBuffer(Math.max(bytes, LOAD_CHUNK_BYTES * 2));
  return scratchBuf;
}

/**
 * Streamed weight upload: a checkpoint tensor goes to its GPU buffer chunk by chunk (4 MiB reads into two
 * reused host buffers, the next read in flight while the current chunk is written or converted; see
 * io/safetensors.ts readChunks), never as one host copy of the whole tensor.
 *
 * Pacing: `queue.writeBuffer` stages each chunk in the driver's memory until a submit carries it to the
 * GPU. A load records no dispatch, so nothing would submit until the next forward pass and the staged
 * copies of a 24 GB model would pile up in host memory. Every SUBMIT_BYTES of writes are submitted, with at
 * most two such batches in flight (the GPU copies one while the host reads and stages the next).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { LOAD_CHUNK_BYTES } from '../io/safetensors.js';

const SUBMIT_BYTES = 256 << 20;
const pacing = new WeakMap<Gpu, { since: number; done: Promise<unknown> | null }>();

/** Write `bytes` (a reused buffer: copied before this returns) into `t` at `byteOffset`, then pace. */
export async function writeChunk(g: Gpu, t: Tensor, byteOffset: number, bytes: Uint8Array): Promise<void> {
  g.writeBytes(t, byteOffset, bytes);
  await pace(g, bytes.byteLength);
}

/** Count `n` written bytes; every SUBMIT_BYTES submit them and wait for the batch before the previous one. */
export async function pace(g: Gpu, n: number): Promise<void> {
  let p = pacing.get(g);
  if (!p) pacing.set(g, (p = { since: 0, done: null }));
  p.since += n;
  if (p.since < SUBMIT_BYTES) return;
  p.since = 0;
  const prev = p.done;
  g.device.queue.submit([]);
  const done = g.device.queue.onSubmittedWorkDone();
  done.catch(() => undefined); // a lost device surfaces at the runtime's next sync
  p.done = done;
  if (prev) await prev.catch(() => undefined);
}

/**
 * `name`'s bytes as stored into `t` (same byte size, e.g. BF16 → 'bf16'), or through `convert`, which maps
 * each chunk of whole elements (`elemBytes` each) to the bytes to write; its output may be a reused scratch
 * buffer (it is copied before the next chunk is converted). The tensor is disposed if the load fails.
 */
export async function streamTensor(
  g: Gpu,
  ckpt: Checkpoint,
  name: string,
  t: Tensor,
  convert?: { elemBytes: number; outBytes: number; fn: (chunk: Uint8Array) => Uint8Array },
): Promise<Tensor> {
  try {
    let out = 0;
    // Chunks of whole elements whose converted size is whole words (writeBuffer offsets).
    const unit = convert ? convert.elemBytes * Math.max(1, 4 / gcd(4, convert.outBytes)) : 4;
    for await (const c of ckpt.tensorChunks(name, Math.floor(LOAD_CHUNK_BYTES / unit) * unit)) {
      const b = convert ? convert.fn(c) : c;
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

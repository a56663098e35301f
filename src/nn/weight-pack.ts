/**
 * Packed Linear weights loaded in chunks (nn/weight.ts loadLinearWeight): a bf16 checkpoint tensor converted
 * to q8 / q4 / fp8_e4m3 row chunk by row chunk (packed on the GPU by ops/pack-quant.ts where it fits the
 * binding limit, else on the host into scratch), or a file already in the target format streamed as stored.
 * Neither holds the whole tensor on the host; both write straight into the weight's GPU tensors.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { bf16ToE4m3Codes, packedRowBytes, quantizeBf16Into, quantScaleTable, QBLOCK, type PackedFormat } from '../io/quant.js';
import { LOAD_CHUNK_BYTES } from '../io/safetensors.js';
import { scratch, streamTensor, writeChunk } from './upload.js';
import { weightGpu } from './weights.js';
import { PACK_BLOCK, packQuantChunk } from '../ops/pack-quant.js';

/** GPU tensors of a packed [N, K] weight: u32 words [N, row words] (+ f16 scales [N, K / QBLOCK]). */
function packedTensors(g: Gpu, name: string, N: number, K: number, fmt: PackedFormat): [Tensor, Tensor | undefined] {
  const words = (packedRowBytes(fmt, K) * N) / 4;
  const data = weightGpu(g).empty([N, words / N], 'u32', name);
  return [data, fmt === 'q8' || fmt === 'q4' ? weightGpu(g).empty([N, K / QBLOCK], 'f16', `${name}.scales`) : undefined];
}

/**
 * A bf16 [N, K] tensor's bytes in chunks of at most `rows` rows, through the checkpoint (a renamed view of the
 * diffusers layout joins to_q/to_k/to_v and swaps halves: its bytes are not one range of one file).
 */
async function* bf16RowChunks(ckpt: Checkpoint, name: string, K: number, rows: number): AsyncGenerator<Uint8Array> {
  const step = rows * 2 * K;
  for await (const c of ckpt.tensorChunks(name, step)) for (let at = 0; at < c.byteLength; at += step) yield c.subarray(at, Math.min(c.byteLength, at + step));
}

/**
 * bf16 [N, K] → q8 / q4 / fp8_e4m3 in chunks of whole rows (an even count, so that each chunk's scales are
 * whole words). q8 / q4 are packed on the GPU (packBf16OnGpu) unless the packed weight is over the binding
 * limit; otherwise, and for fp8, each chunk is packed into scratch on the host (quantizeBf16Into /
 * bf16ToE4m3Codes: bit-identical to quantizeBlocks / the whole-tensor path) and written at its rows' offsets.
 */
export async function packBf16Streamed(g: Gpu, ckpt: Checkpoint, name: string, N: number, K: number, fmt: 'q8' | 'q4' | 'fp8_e4m3', where: 'gpu' | 'host'): Promise<[Tensor, Tensor | undefined]> {
  const [data, sc] = packedTensors(g, name, N, K, fmt);
  if (fmt !== 'fp8_e4m3' && data.byteLength <= g.maxBindingBytes && where === 'gpu' && QBLOCK === PACK_BLOCK) return packBf16OnGpu(g, ckpt, name, N, K, fmt, data, sc!);
  try {
    const rows = Math.max(2, Math.floor(LOAD_CHUNK_BYTES / (2 * K) / 2) * 2);
    let r0 = 0;
    for await (const c of bf16RowChunks(ckpt, name, K, rows)) {
      const r = c.byteLength / (2 * K);
      const bits = new Uint16Array(c.buffer, c.byteOffset, r * K);
      const codeBytes = packedRowBytes(fmt, K) * r;
      const nb = (r * K) / QBLOCK;
      // scratch layout: [f32 widened rows | codes | scales]
      const buf = scratch(r * K * 4 + codeBytes + nb * 2 + 8);
      const codes = new Uint8Array(buf, r * K * 4, codeBytes);
      if (fmt === 'fp8_e4m3') bf16ToE4m3Codes(bits, codes);
      else {
        const scales = new Uint16Array(buf, r * K * 4 + Math.ceil(codeBytes / 4) * 4, nb);
        quantizeBf16Into(bits, r, K, fmt, codes, scales, new Float32Array(buf, 0, r * K));
        await writeChunk(g, sc!, (r0 * K / QBLOCK) * 2, new Uint8Array(scales.buffer, scales.byteOffset, scales.byteLength));
      }
      await writeChunk(g, data, r0 * packedRowBytes(fmt, K), codes);
      r0 += r;
    }
    return [data, sc];
  } catch (e) {
    data.dispose();
    sc?.dispose();
    throw e;
  }
}

const scaleTables = new Map<'q8' | 'q4', Uint32Array>();
/** quantScaleTable, computed once per format on the host (uploaded per weight: no GPU memory outlives a load). */
function scaleTableHost(fmt: 'q8' | 'q4'): Uint32Array {
  let t = scaleTables.get(fmt);
  if (!t) scaleTables.set(fmt, (t = quantScaleTable(fmt)));
  return t;
}

/**
 * bf16 → q8 / q4 with the packing on the GPU: each chunk of whole rows (an even count) is written into a
 * staging tensor and packed by ops/pack-quant.ts straight into the weight's tensors (bit-identical to
 * quantizeBlocks). The host only reads and copies, so the load runs near the upload speed.
 */
async function packBf16OnGpu(g: Gpu, ckpt: Checkpoint, name: string, N: number, K: number, fmt: 'q8' | 'q4', data: Tensor, sc: Tensor): Promise<[Tensor, Tensor]> {
  // chunks of one upload-ring write each: the rows' bf16 bytes go from the file into staging memory directly
  const rows = Math.max(2, Math.floor(g.uploads.chunkBytes / (2 * K) / 2) * 2);
  // Staging tensors in turn, one more than the submits allowed in flight: each chunk is one submit (its pack)
  // followed by g.pace(), so the tensor a chunk is written into was last read by a pack that has finished,
  // and the host reads the next chunk while the GPU packs. Without the bound the host runs ahead of the
  // packs and each write that finds Dawn's 4 MiB upload buffer still in use gets a fresh one (created and
  // zero-filled): on lavapipe the load's host side cost 1.45 CPU-s per GB so, 1.09 with the bound.
  const staging = Array.from({ length: Math.min(g.maxInFlight + 1, Math.ceil(N / rows)) }, (_, i) => weightGpu(g).empty([Math.ceil((rows * K) / 2)], 'u32', `${name} (bf16 staging ${i})`));
  const table = weightGpu(g).upload(scaleTableHost(fmt), [1 << 15], 'u32', `${fmt} scale table`); // untracked: held across awaits
  const read = ckpt.tensorReader(name);
  try {
    for (let r0 = 0, i = 0; r0 < N; r0 += rows, i++) {
      const r = Math.min(rows, N - r0), x = staging[i % staging.length];
      await g.writeVia(x, 0, r * 2 * K, (v, at) => read(v, r0 * 2 * K + at));
      packQuantChunk(x, table, data, sc, fmt, (r0 * K) / QBLOCK, (r * K) / QBLOCK);
      g.flush();
      await g.pace();
    }
    return [data, sc];
  } catch (e) {
    data.dispose();
    sc.dispose();
    throw e;
  } finally {
    for (const x of staging) x.dispose();
    table.dispose();
  }
}

/** A packed weight already in the target format on disk: codes and scales streamed as stored. */
export async function streamStored(g: Gpu, ckpt: Checkpoint, name: string, N: number, K: number, fmt: PackedFormat): Promise<[Tensor, Tensor | undefined]> {
  const [data, sc] = packedTensors(g, name, N, K, fmt);
  try {
    await streamTensor(g, ckpt, name, data);
    const q = ckpt.info(name).quant;
    if (q && sc) {
      let off = 0;
      for await (const c of ckpt.fileOf(name).readChunks(q.scale.begin, q.scale.end - q.scale.begin)) {
        await writeChunk(g, sc, off, c);
        off += c.byteLength;
      }
    }
    return [data, sc];
  } catch (e) {
    data.dispose();
    sc?.dispose();
    throw e;
  }
}

/**
 * q8 / q4 packing of bf16 weights on the GPU (shaders/pack-quant.wgsl), bit-identical to io/quant.ts
 * quantizeBlocks, its reference: a loader uploads a chunk of whole rows of bf16 into a staging tensor and
 * `packQuantChunk` writes that chunk's codes and scales into the weight's tensors at the chunk's offsets.
 *
 * The block scale depends only on the block's max |w| bits m (15 bits), so `scaleTable` runs the reference
 * itself on one block per m (32768 of them, once per format and device) and the kernel looks it up: the
 * scale's double rounding (f64 → f32 → f16) and its NaN / Inf / underflow rules come out exactly.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { QBLOCK, quantizeBlocks, type BlockFormat } from '../io/quant.js';
import { fail } from '../errors.js';

const tables = new WeakMap<Gpu, Map<BlockFormat, Tensor>>();

/** f16 scale bits quantizeBlocks gives a block whose max |bf16| has bits m, for every m < 2^15. */
export function scaleTableHost(format: BlockFormat): Uint32Array {
  const out = new Uint32Array(1 << 15);
  const block = new Float32Array(QBLOCK);
  const u = new Uint32Array(block.buffer, 0, 1);
  for (let m = 0; m < 1 << 15; m++) {
    u[0] = m << 16;
    out[m] = quantizeBlocks(block, 1, QBLOCK, format).scales[0];
  }
  return out;
}

function scaleTable(g: Gpu, format: BlockFormat): Tensor {
  let byFmt = tables.get(g);
  if (!byFmt) tables.set(g, (byFmt = new Map()));
  let t = byFmt.get(format);
  if (!t || t.isDisposed) byFmt.set(format, (t = g.upload(scaleTableHost(format), [1 << 15], 'u32', `pack-quant ${format} scale table`)));
  return t;
}

/**
 * Quantize `blocks` blocks of bf16 held in `x` (u32 words, two weights each, from word 0) into `codes`
 * (u32 words of the whole weight) from block `block0` on, and their scales into `scales` (f16 pairs as u32).
 * `block0` must be even (a scale word per two blocks).
 */
export function packQuantChunk(x: Tensor, codes: Tensor, scales: Tensor, format: BlockFormat, block0: number, blocks: number): void {
  const g = x.gpu;
  if (block0 % 2) fail(`packQuantChunk: chunk starts at block ${block0}, not an even block`);
  if (x.byteLength < blocks * QBLOCK * 2) fail(`packQuantChunk: ${blocks} blocks of bf16 do not fit ${x.toString()}`);
  const wordsPerBlock = format === 'q8' ? QBLOCK / 4 : QBLOCK / 8;
  if (codes.byteLength < (block0 + blocks) * wordsPerBlock * 4 || scales.byteLength < (block0 + blocks) * 2)
    fail(`packQuantChunk: blocks [${block0}, ${block0 + blocks}) do not fit ${codes.toString()} / ${scales.toString()}`);
  const pairs = Math.ceil(blocks / 2);
  g.dispatch({
    file: 'pack-quant.wgsl',
    defines: { FMT: format },
    uniforms: [pairs, blocks, block0 * wordsPerBlock, block0 / 2],
    bindings: [x, scaleTable(g, format), codes, scales],
    workgroups: [Math.ceil(pairs / 64)],
  });
}

/**
 * q8 / q4 packing of bf16 weights on the GPU (shaders/pack-quant.wgsl), bit-identical to io/quant.ts
 * quantizeBlocks, its reference: a loader uploads a chunk of whole rows of bf16 into a staging tensor and
 * `packQuantChunk` writes that chunk's codes and scales into the weight's tensors at the chunk's offsets.
 *
 * The block scale depends only on the block's max |w| bits m (15 bits), so the caller passes `table`, the
 * reference run on one block per m (io/quant.ts quantScaleTable, 32768 u32), and the kernel looks it up: the
 * scale's double rounding (f64 → f32 → f16) and its NaN / Inf / underflow rules come out exactly.
 */
import type { Tensor } from '../runtime/tensor.js';
import { fail } from '../errors.js';
import { uniformStruct } from '../runtime/uniforms.js';

/** Weights per block (the shader's; io/quant.ts QBLOCK, which the caller checks). */
export const PACK_BLOCK = 32;
const QBLOCK = PACK_BLOCK;
/** pairs of blocks this dispatch packs; its first code word and scale word in codes / scales. */
const PACK_QUANT = uniformStruct('pack-quant.wgsl', ['pairs', 'blocks', 'code_word0', 'scale_word0']);

/**
 * Quantize `blocks` blocks of bf16 held in `x` (u32 words, two weights each, from word 0) into `codes`
 * (u32 words of the whole weight) from block `block0` on, and their scales into `scales` (f16 pairs as u32).
 * `block0` must be even (a scale word per two blocks).
 */
export function packQuantChunk(
  x: Tensor,
  table: Tensor,
  codes: Tensor,
  scales: Tensor,
  format: 'q8' | 'q4',
  block0: number,
  blocks: number,
  /** Tests: the quotient times this factor (an inexact GPU division), which the exact correction must undo. */
  quotientSkew?: number,
): void {
  const g = x.gpu;
  if (table.numel !== 1 << 15) fail(`packQuantChunk: the scale table has ${table.numel} entries, not 32768`);
  if (block0 % 2) fail(`packQuantChunk: chunk starts at block ${block0}, not an even block`);
  if (x.byteLength < blocks * QBLOCK * 2) fail(`packQuantChunk: ${blocks} blocks of bf16 do not fit ${x.toString()}`);
  const wordsPerBlock = format === 'q8' ? QBLOCK / 4 : QBLOCK / 8;
  if (codes.byteLength < (block0 + blocks) * wordsPerBlock * 4 || scales.byteLength < (block0 + blocks) * 2)
    fail(`packQuantChunk: blocks [${block0}, ${block0 + blocks}) do not fit ${codes.toString()} / ${scales.toString()}`);
  const pairs = Math.ceil(blocks / 2);
  g.dispatch({
    file: 'pack-quant.wgsl',
    defines: quotientSkew === undefined ? { FMT: format } : { FMT: format, QSKEW: quotientSkew.toFixed(12) },
    uniforms: PACK_QUANT({ pairs, blocks, code_word0: block0 * wordsPerBlock, scale_word0: block0 / 2 }),
    bindings: [x, table, codes, scales],
    workgroups: [Math.ceil(pairs / 64)],
  });
}

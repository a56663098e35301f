/**
 * Qwen2.5-VL vision tower (transformers' Qwen2_5_VisionTransformerPretrainedModel), checkpoint
 * prefix `visual.`:
 *   patch_embed  Conv3d(C, Dv, (2, 14, 14), stride = kernel, no bias) over pixel_values [N, C·2·14·14]
 *                = one GEMM with the weight viewed as [Dv, 1176]
 *   reorder      rows grouped by merged unit (4 patches) are permuted by get_window_index so each
 *                window (4×4 merged units = 8×8 patches) is contiguous; RoPE tables likewise
 *   blocks       x += proj(attn(rope(q), rope(k), v)) over norm1(x), window segments (full attention
 *                for fullatt_block_indexes: one segment per frame); x += down(silu(gate)·up) over norm2(x)
 *                RMSNorm eps 1e-6, all linears biased, Dh = Dv / heads, 2-D rope (h, w) theta 10000
 *   merger       ln_q (RMSNorm) → 4 consecutive patches as one [4·Dv] row → Linear → GELU(erf) → Linear
 *   un-permute   merged rows back to the processor's order (argsort of the window index)
 * Shapes: N patches (t·h·w), Dv 1280 / Dh 80 / 16 heads / MLP 3420 / out 3584 for the real model.
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import type { Checkpoint } from '../../io/checkpoint.js';
import { linear } from '../../ops/linear.js';
import { rmsNorm, swiglu } from '../../ops/norm.js';
import { add } from '../../ops/elementwise.js';
import { gatherRows } from '../../ops/layout.js';
import { attention } from '../../ops/attention.js';
import { applyRopeHalf } from '../../ops/rope.js';
import { visionRopeCosSin } from '../../ops/rope-tables.js';
import { chain, scan } from '../../nn/chain.js';
import { fail, fmtShape } from '../../errors.js';
import type { QwenVisionConfig } from './config.js';
import { LayerSet, VisionBlockWeights, VisionFixed, towerBytes } from './loader.js';
import {
  cuSeqlensToSegments, fullAttentionCuSeqlens, getWindowIndex, invertPermutation, permuteRows, type GridThw,
} from './positions.js';

export interface VisionTrace {
  /** [N, Dv] patch embedding, original patch order. */
  patchEmbed?(t: Tensor): Promise<void>;
  /** Output of block i, [N, Dv] in window-reordered order. */
  block?(i: number, t: Tensor): Promise<void>;
}

const EPS = 1e-6;

export class QwenVisionTower {
  private constructor(
    readonly cfg: QwenVisionConfig,
    /** patch_embed and merger (`visual.*` outside the blocks), always resident. */
    readonly fixed: VisionFixed,
    readonly blocks: LayerSet<VisionBlockWeights>,
  ) {}

  /** Bytes of all blocks (streaming decision) and of the always-resident parts, from the declarations. */
  static sizes(ckpt: Checkpoint, cfg: QwenVisionConfig): { blocks: number; fixed: number } {
    return towerBytes(ckpt, new VisionBlockWeights(cfg), 'visual.blocks', cfg.depth, new VisionFixed(cfg), 'visual');
  }

  static async load(g: Gpu, ckpt: Checkpoint, cfg: QwenVisionConfig, streamed: boolean): Promise<QwenVisionTower> {
    const fixed = await new VisionFixed(cfg).load(g, ckpt, 'visual');
    const blocks = new LayerSet(g, cfg.depth, (i) => new VisionBlockWeights(cfg).load(g, ckpt, `visual.blocks.${i}`), streamed);
    const tower = new QwenVisionTower(cfg, fixed, blocks);
    try {
      await blocks.preload();
    } catch (e) {
      await tower.dispose();
      throw e;
    }
    return tower;
  }

  /**
   * pixel_values [N, C·T·P·P] (host f32, processor layout) for the images `grids` →
   * image embeddings [N / merge², out_hidden] on the GPU, in the processor's order.
   */
  async forward(g: Gpu, pixelValues: Float32Array, grids: readonly GridThw[], trace: VisionTrace = {}): Promise<Tensor> {
    const c = this.cfg;
    const unit = c.spatialMergeSize ** 2;
    const proj = this.fixed.patch_embed.proj.weight.value;
    const K = proj.numel / proj.shape[0];
    const N = grids.reduce((s, [t, h, w]) => s + t * h * w, 0);
    if (pixelValues.length !== N * K)
      fail(`vision: pixel_values has ${pixelValues.length} values, expected [${N}, ${K}] for image_grid_thw ${JSON.stringify(grids)}`);
    const Dv = c.hiddenSize, H = c.numHeads, Dh = Dv / H;

    // host-side index logic
    const { windowIndex, cuWindowSeqlens } = getWindowIndex(grids, c.windowSize, c.spatialMergeSize, c.patchSize);
    // 2-D rope tables in the processor's patch order, then reordered like the hidden states
    const tables = visionRopeCosSin(grids.map((x) => [...x] as [number, number, number]), c.spatialMergeSize, Dh);
    return g.scopeAsync(async () => {
      // alive for the whole tower, freed when it returns
      const cos = g.upload(permuteRows(tables.cos, unit * Dh, windowIndex), [1, N, Dh], 'f32', 'vision.cos');
      const sin = g.upload(permuteRows(tables.sin, unit * Dh, windowIndex), [1, N, Dh], 'f32', 'vision.sin');
      const segWin = g.upload(cuSeqlensToSegments(cuWindowSeqlens, N), [N], 'i32', 'vision.window_segments');
      const segFull = g.upload(cuSeqlensToSegments(fullAttentionCuSeqlens(grids), N), [N], 'i32', 'vision.frame_segments');
      const blocks = Array.from({ length: c.depth }, (_, i) => async (h: Tensor) => {
        const segments = c.fullattBlockIndexes.includes(i) ? segFull : segWin;
        const y = await this.blocks.stream(i, (w) => visionBlock(w, h, { cos, sin }, segments, H));
        if (trace.block) await trace.block(i, y.reshape([N, Dv]));
        return y;
      });
      const out = await scan(g,
        async () => {
          // the Conv3d weight viewed as [Dv, C·T·P·P]: one GEMM
          const pe = linear(g.upload(pixelValues, [N, K], 'f32', 'pixel_values'), proj.reshape([proj.shape[0], K])); // [N, Dv]
          if (trace.patchEmbed) await trace.patchEmbed(pe);
          return pe;
        }, [
          // merged units (4 patches, one [4·Dv] row each) in window order
          (pe) => gatherRows(pe.reshape([N / unit, unit * Dv]), windowIndex).reshape([1, N, Dv]),
          ...blocks,
          (h) => this.merge(h, windowIndex),
        ]);
      if (out.shape[0] !== N / unit) fail(`vision: merger output ${fmtShape(out.shape)} for ${N} patches`);
      return out;
    });
  }

  /** merger: ln_q, 4 consecutive patches as one [4·Dv] row, Linear → GELU(erf) → Linear, rows back to the processor's order. */
  private merge(h: Tensor, windowIndex: Int32Array): Tensor {
    const { ln_q, mlp: [fc1, act, fc2] } = this.fixed.merger, [, N, Dv] = h.shape, unit = this.cfg.spatialMergeSize ** 2;
    return chain(h.gpu,
      () => rmsNorm(h, ln_q.weight.value, EPS).reshape([N / unit, unit * Dv]),
      (u) => fc1.forward(u, act),
      (u) => fc2.forward(u),
      (u) => gatherRows(u, invertPermutation(windowIndex)));
  }

  async dispose(): Promise<void> {
    this.fixed.dispose();
    await this.blocks.dispose();
  }
}

/**
 * Qwen2_5_VLVisionBlock: h + proj(attn(rope(q), rope(k), v)) over norm1(h) within `segments`, then
 * + down(silu(gate)·up) over norm2; h [1, N, Dv], rope tables [1, N, Dh].
 */
export function visionBlock(w: VisionBlockWeights, h: Tensor, rope: { cos: Tensor; sin: Tensor }, segments: Tensor, H: number): Tensor {
  const g = h.gpu, [, N, Dv] = h.shape, Dh = Dv / H;
  const heads = (t: Tensor) => t.reshape([1, N, H, Dh]);
  const [q, k, v] = [0, 1, 2].map((i) => w.attn.qkv.rows(i * Dv, Dv)); // views of the fused qkv, rows (3, H, Dh)
  return chain(g,
    () => add(h, chain(g,
      () => rmsNorm(h, w.norm1.weight.value, EPS),
      (x) => [heads(q.forward(x)), heads(k.forward(x)), heads(v.forward(x))],
      ([q, k, v]) => [applyRopeHalf(q, rope.cos, rope.sin), applyRopeHalf(k, rope.cos, rope.sin), v],
      ([q, k, v]) => attention(q, k, v, { segments }).reshape([1, N, Dv]),
      (o) => w.attn.proj.forward(o))),
    (h1) => add(h1, chain(g,
      () => rmsNorm(h1, w.norm2.weight.value, EPS),
      (x) => [w.mlp.gate_proj.forward(x), w.mlp.up_proj.forward(x)],
      ([gate, up]) => swiglu(gate, up),
      (act) => w.mlp.down_proj.forward(act))));
}

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
import { loadWeight } from '../../nn/weights.js';
import { Linear } from '../../nn/linear.js';
import { linear } from '../../ops/linear.js';
import { rmsNorm, swiglu } from '../../ops/norm.js';
import { add } from '../../ops/elementwise.js';
import { gatherRows } from '../../ops/layout.js';
import { attention } from '../../ops/attention.js';
import { applyRopeHalf } from '../../ops/rope.js';
import { visionRopeCosSin } from '../../ops/rope-tables.js';
import { fail, fmtShape } from '../../errors.js';
import type { QwenVisionConfig } from './config.js';
import { LayerSet, VisionBlockWeights, tensorBytes } from './loader.js';
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
    readonly patch_embed: { proj: Tensor /* [Dv, C·T·P·P] view of the Conv3d weight */ },
    readonly blocks: LayerSet<VisionBlockWeights>,
    readonly merger: { ln_q: Tensor; mlp0: Linear; mlp2: Linear },
  ) {}

  /** Bytes of all blocks (streaming decision) and of the always-resident parts. */
  static sizes(ckpt: Checkpoint, cfg: QwenVisionConfig): { blocks: number; fixed: number } {
    const blocks = Array.from({ length: cfg.depth }, (_, i) => VisionBlockWeights.names(i)).flat();
    const fixed = ['visual.patch_embed.proj.weight', 'visual.merger.ln_q.weight', 'visual.merger.mlp.0.weight',
      'visual.merger.mlp.0.bias', 'visual.merger.mlp.2.weight', 'visual.merger.mlp.2.bias'];
    return { blocks: tensorBytes(ckpt, blocks), fixed: tensorBytes(ckpt, fixed) };
  }

  static async load(g: Gpu, ckpt: Checkpoint, cfg: QwenVisionConfig, streamed: boolean): Promise<QwenVisionTower> {
    const w = await loadWeight(g, ckpt, 'visual.patch_embed.proj.weight');
    const proj = w.reshape([w.shape[0], w.numel / w.shape[0]]);
    w.dispose();
    const blocks = new LayerSet(cfg.depth, (i) => VisionBlockWeights.load(g, ckpt, i), streamed);
    const tower = new QwenVisionTower(cfg, { proj }, blocks, {
      ln_q: await loadWeight(g, ckpt, 'visual.merger.ln_q.weight'),
      mlp0: await Linear.load(g, ckpt, 'visual.merger.mlp.0', { bias: true }),
      mlp2: await Linear.load(g, ckpt, 'visual.merger.mlp.2', { bias: true }),
    });
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
    const K = this.patch_embed.proj.shape[1];
    const N = grids.reduce((s, [t, h, w]) => s + t * h * w, 0);
    if (pixelValues.length !== N * K)
      fail(`vision: pixel_values has ${pixelValues.length} values, expected [${N}, ${K}] for image_grid_thw ${JSON.stringify(grids)}`);
    const Dv = c.hiddenSize, H = c.numHeads, Dh = Dv / H;

    // host-side index logic
    const { windowIndex, cuWindowSeqlens } = getWindowIndex(grids, c.windowSize, c.spatialMergeSize, c.patchSize);
    // 2-D rope tables in the processor's patch order, then reordered like the hidden states
    const tables = visionRopeCosSin(grids.map((x) => [...x] as [number, number, number]), c.spatialMergeSize, Dh);
    const cosT = g.upload(permuteRows(tables.cos, unit * Dh, windowIndex), [1, N, Dh], 'f32', 'vision.cos');
    const sinT = g.upload(permuteRows(tables.sin, unit * Dh, windowIndex), [1, N, Dh], 'f32', 'vision.sin');
    const segWin = g.upload(cuSeqlensToSegments(cuWindowSeqlens, N), [N], 'i32', 'vision.window_segments');
    const segFull = g.upload(cuSeqlensToSegments(fullAttentionCuSeqlens(grids), N), [N], 'i32', 'vision.frame_segments');

    const px = g.upload(pixelValues, [N, K], 'f32', 'pixel_values');
    const pe = linear(px, this.patch_embed.proj); // [N, Dv]
    px.dispose();
    if (trace.patchEmbed) await trace.patchEmbed(pe);
    const peUnits = pe.reshape([N / unit, unit * Dv]);
    const reordered = gatherRows(peUnits, windowIndex);
    peUnits.dispose();
    pe.dispose();
    let h = reordered.reshape([1, N, Dv]);
    reordered.dispose();

    const heads = (t: Tensor) => {
      const r = t.reshape([1, N, H, Dh]);
      t.dispose();
      return r;
    };
    try {
      for (let i = 0; i < c.depth; i++) {
        const w = await this.blocks.get(i);
        const x = rmsNorm(h, w.norm1, EPS);
        const q0 = heads(w.attn.q.forward(x)), k0 = heads(w.attn.k.forward(x)), v = heads(w.attn.v.forward(x));
        x.dispose();
        const q = applyRopeHalf(q0, cosT, sinT), k = applyRopeHalf(k0, cosT, sinT);
        q0.dispose();
        k0.dispose();
        const segments = c.fullattBlockIndexes.includes(i) ? segFull : segWin;
        const a = attention(q, k, v, { segments });
        q.dispose(); k.dispose(); v.dispose();
        const a2 = a.reshape([1, N, Dv]);
        a.dispose();
        const o = w.attn.proj.forward(a2);
        a2.dispose();
        const h1 = add(h, o);
        o.dispose();
        h.dispose();
        const x2 = rmsNorm(h1, w.norm2, EPS);
        const gate = w.mlp.gate_proj.forward(x2), up = w.mlp.up_proj.forward(x2);
        x2.dispose();
        const act = swiglu(gate, up);
        gate.dispose();
        up.dispose();
        const d = w.mlp.down_proj.forward(act);
        act.dispose();
        h = add(h1, d);
        h1.dispose();
        d.dispose();
        this.blocks.release(i, w);
        if (trace.block) {
          const v2 = h.reshape([N, Dv]);
          await trace.block(i, v2);
          v2.dispose();
        }
      }
      const ln = rmsNorm(h, this.merger.ln_q, EPS);
      const units = ln.reshape([N / unit, unit * Dv]);
      ln.dispose();
      const m0 = this.merger.mlp0.forward(units, 'gelu_erf');
      units.dispose();
      const m2 = this.merger.mlp2.forward(m0);
      m0.dispose();
      const out = gatherRows(m2, invertPermutation(windowIndex));
      m2.dispose();
      if (out.shape[0] !== N / unit) fail(`vision: merger output ${fmtShape(out.shape)} for ${N} patches`);
      return out;
    } finally {
      h.dispose();
      for (const t of [cosT, sinT, segWin, segFull]) t.dispose();
    }
  }

  async dispose(): Promise<void> {
    this.patch_embed.proj.dispose();
    this.merger.ln_q.dispose();
    this.merger.mlp0.dispose();
    this.merger.mlp2.dispose();
    await this.blocks.dispose();
  }
}

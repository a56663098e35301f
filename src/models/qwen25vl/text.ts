/**
 * Qwen2.5-VL language model (transformers' Qwen2_5_VLTextModel), checkpoint prefix `model.`:
 *   embed_tokens   rows gathered on the HOST from the checkpoint (only the needed rows' bytes are
 *                  read; the 152064×3584 bf16 table is never uploaded), image-pad tokens replaced by
 *                  the vision output in order (masked_scatter)
 *   layers         h += o_proj(attn(mrope(q), mrope(k), v)) over input_layernorm(h);
 *                  h += down(silu(gate)·up) over post_attention_layernorm(h)
 *                  q/k/v biased, o_proj and the MLP not; GQA (28 query / 4 KV heads, Dh 128 real);
 *                  causal; keys with mask 0 never attended; a query row with mask 0 attends
 *                  normally with SDPA/eager semantics (current official code) or gets attention
 *                  output exactly 0 before o_proj with flash-attention-2 semantics (May 2025)
 *   norm           final RMSNorm (f32)
 * Several sequences (e.g. [instruction, ""]) run layer-major: each layer's weights are loaded
 * once (streamed or resident) and applied to every sequence, each at its own length (B = 1 each).
 * Intermediates are freed by scope (nn/chain.ts), each as soon as the next value exists.
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import type { Checkpoint } from '../../io/checkpoint.js';
import { rmsNorm, swiglu } from '../../ops/norm.js';
import { add } from '../../ops/elementwise.js';
import { attention } from '../../ops/attention.js';
import { applyRopeHalf } from '../../ops/rope.js';
import { mropeCosSin } from '../../ops/rope-tables.js';
import { chain, scan } from '../../nn/chain.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenTextConfig } from './config.js';
import { DecoderLayerWeights, LayerSet, TextFixed, gatherEmbeddingRows, towerBytes } from './loader.js';

/** How masked text tokens' own rows attend: 'sdpa' (eager semantics, current official) or 'flash' (zeroed, May 2025). */
export type TextAttention = 'sdpa' | 'flash';

/** One sequence's state through the decoder (B = 1). */
export interface TextSequence {
  /** [1, L, D] hidden state (replaced after every layer). */
  h: Tensor;
  cos: Tensor;
  sin: Tensor;
  keyMask?: Tensor;
  queryMask?: Tensor;
}

/** One decoder layer on one sequence: returns the new hidden state [1, L, D] (input `s.h` left alive). */
export function decoderLayer(c: QwenTextConfig, w: DecoderLayerWeights, s: TextSequence): Tensor {
  return residualLayer(c, w, s.h, s, (q, k, v) => attention(q, k, v, { causal: true, keyMask: s.keyMask, queryMask: s.queryMask }));
}

/**
 * Qwen2_5_VLDecoderLayer around an attention (shared with the KV-cached layer, generate.ts):
 * h + o_proj(attend(mrope(q), mrope(k), v)) over input_layernorm(h), then + down(silu(gate)·up) over
 * post_attention_layernorm. `attend` gets q [1, L, H, Dh], k/v [1, L, Hkv, Dh] and returns [1, L, H, Dh].
 */
export function residualLayer(c: QwenTextConfig, w: DecoderLayerWeights, h: Tensor, rope: { cos: Tensor; sin: Tensor },
  attend: (q: Tensor, k: Tensor, v: Tensor) => Tensor): Tensor {
  const g = h.gpu, L = h.shape[1], H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, Dh = c.headDim, eps = c.rmsNormEps;
  const sa = w.self_attn, mlp = w.mlp;
  return chain(g,
    () => add(h, chain(g,
      () => rmsNorm(h, w.input_layernorm.weight.value, eps),
      (x) => [sa.q_proj.forward(x).reshape([1, L, H, Dh]), sa.k_proj.forward(x).reshape([1, L, Hkv, Dh]), sa.v_proj.forward(x).reshape([1, L, Hkv, Dh])],
      ([q, k, v]) => [applyRopeHalf(q, rope.cos, rope.sin), applyRopeHalf(k, rope.cos, rope.sin), v],
      ([q, k, v]) => attend(q, k, v).reshape([1, L, H * Dh]),
      (a) => sa.o_proj.forward(a))),
    (h1) => add(h1, chain(g,
      () => rmsNorm(h1, w.post_attention_layernorm.weight.value, eps),
      (x) => [mlp.gate_proj.forward(x), mlp.up_proj.forward(x)],
      ([gate, up]) => swiglu(gate, up),
      (act) => mlp.down_proj.forward(act))));
}

export class QwenTextModel {
  private constructor(
    readonly cfg: QwenTextConfig,
    readonly ckpt: Checkpoint,
    readonly layers: LayerSet<DecoderLayerWeights>,
    /** `model.norm` (embed_tokens stays on the host), always resident. */
    readonly fixed: TextFixed,
  ) {}

  get norm(): Tensor {
    return this.fixed.norm.weight.value;
  }

  /** Bytes of all layers (streaming decision) and of the always-resident parts, from the declarations. */
  static sizes(ckpt: Checkpoint, cfg: QwenTextConfig): { blocks: number; fixed: number } {
    return towerBytes(ckpt, new DecoderLayerWeights(cfg), 'model.layers', cfg.numHiddenLayers, new TextFixed(cfg), 'model');
  }

  static async load(g: Gpu, ckpt: Checkpoint, cfg: QwenTextConfig, streamed: boolean): Promise<QwenTextModel> {
    const layers = new LayerSet(g, cfg.numHiddenLayers, (i) => new DecoderLayerWeights(cfg).load(g, ckpt, `model.layers.${i}`), streamed);
    const m = new QwenTextModel(cfg, ckpt, layers, await new TextFixed(cfg).load(g, ckpt, 'model'));
    try {
      await layers.preload();
    } catch (e) {
      await m.dispose();
      throw e;
    }
    return m;
  }

  /**
   * Build a sequence's GPU state: embeddings (host gather + image rows from `imageEmbeds`
   * [n_image_tokens, D], in order), M-RoPE tables from position ids [3, L], masks when any is 0.
   */
  async prepare(g: Gpu, inputIds: Int32Array, positionIds: Int32Array, attentionMask: Int32Array | null,
    imageTokenId: number, imageEmbeds: Tensor | null, textAttention: TextAttention = 'sdpa'): Promise<TextSequence> {
    const c = this.cfg, L = inputIds.length, D = c.hiddenSize;
    const rows = await gatherEmbeddingRows(this.ckpt, inputIds);
    const h = g.upload(rows, [1, L, D], 'f32', 'inputs_embeds');
    // masked_scatter: image-pad positions take the vision rows in order; copy each contiguous run
    let used = 0;
    for (let i = 0; i < L; ) {
      if (inputIds[i] !== imageTokenId) {
        i++;
        continue;
      }
      let j = i;
      while (j < L && inputIds[j] === imageTokenId) j++;
      const n = j - i;
      if (!imageEmbeds || used + n > imageEmbeds.shape[0])
        fail(`image features and image tokens do not match: more than ${imageEmbeds?.shape[0] ?? 0} image tokens (id ${imageTokenId}) in input_ids`, ExitCode.USAGE);
      g.copyInto(imageEmbeds.rows(used, n), h, i * D * 4); // the view goes with the caller's scope
      used += n;
      i = j;
    }
    if (imageEmbeds && used !== imageEmbeds.shape[0])
      fail(`image features and image tokens do not match: tokens ${used}, features ${imageEmbeds.shape[0]}`, ExitCode.USAGE);
    const { cos, sin } = mropeCosSin(positionIds, 1, L, c.headDim, c.ropeTheta, [...c.mropeSection]);
    const seq: TextSequence = {
      h,
      cos: g.upload(cos, [1, L, c.headDim], 'f32', 'mrope.cos'),
      sin: g.upload(sin, [1, L, c.headDim], 'f32', 'mrope.sin'),
    };
    if (attentionMask && attentionMask.some((m) => m === 0)) {
      const m = Float32Array.from(attentionMask, (v) => (v ? 1 : 0));
      seq.keyMask = g.upload(m, [1, L], 'f32', 'key_mask');
      // flash_attention_2 unpads: a masked token's own attention output is 0; SDPA/eager let it attend
      if (textAttention === 'flash') seq.queryMask = g.upload(m, [1, L], 'f32', 'query_mask');
    }
    return seq;
  }

  /** One decoder layer on one sequence (see decoderLayer). */
  layer(w: DecoderLayerWeights, s: TextSequence): Tensor {
    return decoderLayer(this.cfg, w, s);
  }

  /**
   * Run all layers over `count` sequences (layer-major) and the final norm: the final normed states
   * [1, L, D] in order. `first()` makes the sequences; what it makes on the way (image embeddings) is
   * freed before layer 0, and each sequence's state as soon as its next one exists, as if by hand.
   * `onLayer(i, s, h)` sees each raw decoder-layer output [1, L, D].
   */
  async forward(g: Gpu, count: number, first: () => Promise<TextSequence[]>,
    onLayer?: (layer: number, seq: number, h: Tensor) => Promise<void>): Promise<Tensor[]> {
    const steps: ((seqs: TextSequence[]) => Promise<TextSequence[]>)[] = [];
    for (let i = 0; i < this.cfg.numHiddenLayers; i++)
      for (let s = 0; s < count; s++)
        steps.push(async (seqs) => {
          // a streamed layer stays loaded for the next sequence
          const h = await this.layers.stream(i, (w) => this.layer(w, seqs[s]), { again: s < count - 1 });
          if (onLayer) await onLayer(i, s, h);
          return seqs.map((q, k) => (k === s ? { ...q, h } : q));
        });
    steps.push(async (seqs) => seqs.map((q) => ({ ...q, h: rmsNorm(q.h, this.norm, this.cfg.rmsNormEps) })));
    // the tables and masks go when this scope closes
    return g.scopeAsync(async () => (await scan(g, first, steps)).map((q) => q.h));
  }

  async dispose(): Promise<void> {
    this.fixed.dispose();
    await this.layers.dispose();
  }
}

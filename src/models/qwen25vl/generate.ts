/**
 * Qwen2.5-VL text generation (transformers' `generate()` for Qwen2_5_VLForConditionalGeneration, B = 1):
 *
 *   prefill   vision tower on the prompt's images, embeddings with the image rows scattered in, M-RoPE
 *             positions from get_rope_index (attention mask all ones), every layer over the L prompt tokens
 *             filling the KV cache (below); logits of the last position only
 *   decode    one token per step: its embedding row (host gather), position n + rope_delta on all three
 *             M-RoPE axes (n = tokens so far), every layer with M = 1 over the cached keys
 *   lm_head   `lm_head.weight` [V, D], or `model.embed_tokens.weight` when the checkpoint has no lm_head
 *             (tie_word_embeddings, e.g. the tiny test Qwen); f32 logits read back per step
 *   choice    the caller's `choose(logits, history)` (pipeline/reason/sampling.ts: repetition penalty over
 *             prompt + generated ids, then greedy argmax or the sampling chain with our seeded drawer);
 *             a stop id is appended, then generation ends
 *
 * The model's weights may be streamed per layer (QwenVL.load's residency plan): then every step streams
 * all layers, which is correct but bandwidth-bound on the disk.
 *
 * The KV cache: per layer one K and one V buffer [Lmax, Hkv·Dh] f32 (keys stored AFTER M-RoPE, as transformers'
 * DynamicCache holds them). A step appends its L new rows at row `len` and attends its queries over rows
 * [0, len + L) — the prefill (L = prompt length, causal lower triangle) and each decode step (L = 1, every
 * cached key visible: attention's causal rule j ≤ i + Lk − Lq) are the same code. No attention mask: the
 * thinker's prompts are unpadded (attention_mask all ones), so a `!` (id 0) token is an ordinary key.
 * Real size: 28 layers × 2 × Lmax × 512 × 4 B = 112 KiB per token of Lmax. The cache is a tensor of
 * generate()'s scope: it lives for one generation. Forward code frees by scope (nn/chain.ts).
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import { Linear } from '../../nn/linear.js';
import { rmsNorm } from '../../ops/norm.js';
import { linear } from '../../ops/linear.js';
import { mropeCosSin } from '../../ops/rope-tables.js';
import { attention } from '../../ops/attention.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenTextConfig } from './config.js';
import { EMBED_TOKENS, LM_HEAD, gatherEmbeddingRows, type DecoderLayerWeights } from './loader.js';
import { residualLayer } from './text.js';
import { getRopeIndex } from './positions.js';
import type { QwenInput, QwenVL } from './model.js';
import { scan } from '../../nn/chain.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** Ids that end generation (appended to the output first), e.g. [151645] for the thinker. */
  eosTokenIds: readonly number[];
  /** The next token from the raw logits [V] and every id so far (prompt + generated). */
  choose(logits: Float32Array, history: readonly number[]): number;
  /** Per step: the chosen token and the raw logits [V]. */
  onStep?(step: number, token: number, logits: Float32Array): void | Promise<void>;
}

export interface GenerateResult {
  /** New tokens only. */
  ids: Int32Array;
  stoppedBy: 'eos' | 'max_new_tokens';
  promptTokens: number;
  prefillMs: number;
  decodeMs: number;
}

export class QwenGenerator {
  private constructor(readonly g: Gpu, readonly qwen: QwenVL, readonly lmHead: Linear) {}

  /** The generator of a loaded model (loads lm_head, or the tied embedding table as lm_head). */
  static async create(g: Gpu, qwen: QwenVL): Promise<QwenGenerator> {
    const ck = qwen.ckpt, D = qwen.cfg.text.hiddenSize, V = qwen.cfg.text.vocabSize;
    const name = ck.has(LM_HEAD) ? 'lm_head' : 'model.embed_tokens';
    if (name !== 'lm_head' && !ck.has(EMBED_TOKENS)) fail(`${ck.path}: neither ${LM_HEAD} nor ${EMBED_TOKENS}: cannot compute logits`, ExitCode.WEIGHTS);
    const head = await Linear.load(g, ck, name, { shape: [V, D], bias: false });
    return new QwenGenerator(g, qwen, head);
  }

  get vocabSize(): number {
    return this.lmHead.outFeatures;
  }

  /** Logits [V] of the last row of final-normed hidden states `hNormed` [1, L, D] (or [L, D]). */
  async logitsOfLastRow(hNormed: Tensor): Promise<Float32Array> {
    const D = this.qwen.cfg.text.hiddenSize, L = hNormed.numel / D;
    return this.g.scopeAsync(async () => (await this.head(hNormed.reshape([L, D]).rows(L - 1, 1)).read()) as Float32Array);
  }

  /**
   * lm_head on [1, D]. The M ≤ 4 GEMV splits K over 64 lanes per 4 outputs: with a tiny K (the test Qwens,
   * K = 16, V = 152064) most lanes idle across V/4 workgroups, so such heads take the register-tiled path.
   */
  private head(x: Tensor): Tensor {
    const h = this.lmHead;
    if (h.inFeatures < 256 && !h.w.packed) return linear(x, h.weight, undefined, { variant: 'tiled' });
    return h.forward(x);
  }

  /**
   * The step's new rows (made by `first`) through every layer with the cache, appended to it; logits [V]
   * of the last position. Everything but the cache is freed when it returns.
   */
  private async run(cache: KvCache, first: () => CachedStep | Promise<CachedStep>): Promise<Float32Array> {
    const g = this.g, m = this.qwen.model, c = m.cfg;
    const layers = Array.from({ length: c.numHiddenLayers }, (_, i) => async (s: CachedStep) =>
      ({ ...s, h: await m.layers.stream(i, (w) => cachedDecoderLayer(c, w, s, cache, i)) }));
    return g.scopeAsync(async () => {
      const last = await scan(g, first, layers);
      cache.len += last.h.shape[1];
      return this.logitsOfLastRow(rmsNorm(last.h, m.norm, c.rmsNormEps));
    });
  }

  /** The prompt through every layer into the empty `cache`; logits [V] of its last token and rope_delta. */
  private async prefill(cache: KvCache, input: QwenInput): Promise<{ logits: Float32Array; ropeDelta: number }> {
    const g = this.g, q = this.qwen;
    const L = input.inputIds.length;
    if (L > cache.maxLen) fail(`generation: prompt of ${L} tokens exceeds the cache of ${cache.maxLen}`, ExitCode.USAGE);
    let ropeDelta = 0;
    const logits = await this.run(cache, async () => {
      // the image embeddings go once the prompt's state exists
      const img = input.pixelValues && input.gridThw.length ? await q.visual.forward(g, input.pixelValues, input.gridThw) : null;
      const ones = new Int32Array(L).fill(1);
      const pos = getRopeIndex(input.inputIds, ones, img ? input.gridThw : [], { ...q.cfg, spatialMergeSize: q.cfg.vision.spatialMergeSize });
      ropeDelta = pos.ropeDelta;
      const { h, cos, sin } = await q.model.prepare(g, input.inputIds, pos.positionIds, null, q.cfg.imageTokenId, img);
      return { h, cos, sin };
    });
    return { logits, ropeDelta };
  }

  /** Feeds one token at the next position (cache rows + rope_delta on all three axes); logits [V] for the token after it. */
  private async step(cache: KvCache, ropeDelta: number, token: number): Promise<Float32Array> {
    const g = this.g, c = this.qwen.cfg.text, D = c.hiddenSize;
    const row = await gatherEmbeddingRows(this.qwen.ckpt, Int32Array.of(token));
    const p = cache.len + ropeDelta;
    const { cos, sin } = mropeCosSin(Int32Array.of(p, p, p), 1, 1, c.headDim, c.ropeTheta, [...c.mropeSection]);
    return this.run(cache, () => ({
      h: g.upload(row, [1, 1, D], 'f32', 'decode.embeds'),
      cos: g.upload(cos, [1, 1, c.headDim], 'f32', 'decode.cos'),
      sin: g.upload(sin, [1, 1, c.headDim], 'f32', 'decode.sin'),
    }));
  }

  /** generate(): prefill, then up to maxNewTokens tokens (see the header). */
  async generate(input: QwenInput, o: GenerateOptions): Promise<GenerateResult> {
    return this.g.scopeAsync(async () => {
      // the KV cache: tensors of this scope, freed when the generation ends
      const cache = new KvCache(this.g, this.qwen.cfg.text, input.inputIds.length + o.maxNewTokens);
      const t0 = performance.now();
      const prefilled = await this.prefill(cache, input);
      let logits = prefilled.logits;
      const t1 = performance.now();
      const history = Array.from(input.inputIds);
      const out: number[] = [];
      let stoppedBy: GenerateResult['stoppedBy'] = 'max_new_tokens';
      for (let step = 0; step < o.maxNewTokens; step++) {
        const tok = o.choose(logits, history);
        out.push(tok);
        history.push(tok);
        if (o.onStep) await o.onStep(step, tok, logits);
        if (o.eosTokenIds.includes(tok)) {
          stoppedBy = 'eos';
          break;
        }
        if (step + 1 < o.maxNewTokens) logits = await this.step(cache, prefilled.ropeDelta, tok);
      }
      return { ids: Int32Array.from(out), stoppedBy, promptTokens: input.inputIds.length, prefillMs: t1 - t0, decodeMs: performance.now() - t1 };
    });
  }

  dispose(): void {
    this.lmHead.dispose();
  }
}

// ---- KV cache ------------------------------------------------------------------------------------

export class KvCache {
  readonly k: Tensor[];
  readonly v: Tensor[];
  /** Rows filled (the same in every layer once a step has gone through all layers). */
  len = 0;

  /** Tensors of the open scope: made inside generate()'s, they go when the generation ends. */
  constructor(g: Gpu, readonly cfg: QwenTextConfig, readonly maxLen: number) {
    const row = cfg.numKeyValueHeads * cfg.headDim;
    const layers = (kind: string) => Array.from({ length: cfg.numHiddenLayers }, (_, i) => g.empty([maxLen, row], 'f32', `kv.${kind}.${i}`));
    this.k = layers('k');
    this.v = layers('v');
  }

  /** Bytes the cache holds on the GPU. */
  get bytes(): number {
    return 2 * this.cfg.numHiddenLayers * this.maxLen * this.cfg.numKeyValueHeads * this.cfg.headDim * 4;
  }
}

/** One step's inputs: hidden states [1, L, D] and M-RoPE tables [1, L, Dh] of the L new positions. */
export interface CachedStep {
  h: Tensor;
  cos: Tensor;
  sin: Tensor;
}

/**
 * decoderLayer (text.ts) with the cache: the step's k/v rows are appended to layer `i` at row `cache.len`
 * and its queries attend over every cached row. Returns the new hidden state [1, L, D] (`s.h` left alive).
 */
export function cachedDecoderLayer(c: QwenTextConfig, w: DecoderLayerWeights, s: CachedStep, cache: KvCache, i: number): Tensor {
  const L = s.h.shape[1], Hkv = c.numKeyValueHeads, Dh = c.headDim;
  const past = cache.len, total = past + L;
  if (total > cache.maxLen) fail(`generation: ${total} tokens exceed the KV cache of ${cache.maxLen}`, ExitCode.USAGE);
  const g = s.h.gpu, rowBytes = Hkv * Dh * 4;
  const upToNow = (t: Tensor) => t.rows(0, total).reshape([1, total, Hkv, Dh]);
  return residualLayer(c, w, s.h, s, (q, k, v) => {
    g.copyInto(k, cache.k[i], past * rowBytes);
    g.copyInto(v, cache.v[i], past * rowBytes);
    return attention(q, upToNow(cache.k[i]), upToNow(cache.v[i]), { causal: true });
  });
}

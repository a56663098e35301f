/**
 * The key/value cache of Qwen2.5-VL text generation and the cached decoder layer.
 *
 * Per layer one K and one V buffer [Lmax, Hkv·Dh] f32 (keys stored AFTER M-RoPE, as transformers'
 * DynamicCache holds them). A step appends its L new rows at row `len` and attends its queries over rows
 * [0, len + L) — the prefill (L = prompt length, causal lower triangle) and each decode step (L = 1, every
 * cached key visible: attention's causal rule j ≤ i + Lk − Lq) are the same code. No attention mask: the
 * thinker's prompts are unpadded (attention_mask all ones), so a `!` (id 0) token is an ordinary key.
 * Real size: 28 layers × 2 × Lmax × 512 × 4 B = 112 KiB per token of Lmax. The cache lives as long as the
 * scope it is made in (one generate() call, generate.ts).
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import { attention } from '../../ops/attention.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenTextConfig } from './config.js';
import type { DecoderLayerWeights } from './loader.js';
import { residualLayer } from './text.js';

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

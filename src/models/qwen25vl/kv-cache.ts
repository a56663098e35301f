/**
 * The key/value cache of Qwen2.5-VL text generation and the cached decoder layer.
 *
 * Per layer one K and one V buffer [Lmax, Hkv·Dh] f32 (keys stored AFTER M-RoPE, as transformers'
 * DynamicCache holds them). A step appends its L new rows at row `len` and attends its queries over rows
 * [0, len + L) — the prefill (L = prompt length, causal lower triangle) and each decode step (L = 1, every
 * cached key visible: attention's causal rule j ≤ i + Lk − Lq) are the same code. No attention mask: the
 * thinker's prompts are unpadded (attention_mask all ones), so a `!` (id 0) token is an ordinary key.
 * Real size: 28 layers × 2 × Lmax × 512 × 4 B = 112 KiB per token of Lmax.
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import { rmsNorm } from '../../ops/norm.js';
import { attention } from '../../ops/attention.js';
import { applyRopeHalf } from '../../ops/rope.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenTextConfig } from './config.js';
import type { DecoderLayerWeights } from './loader.js';
import { layerOutput } from './text.js';

export class KvCache {
  readonly k: Tensor[];
  readonly v: Tensor[];
  /** Rows filled (the same in every layer once a step has gone through all layers). */
  len = 0;

  constructor(g: Gpu, readonly cfg: QwenTextConfig, readonly maxLen: number) {
    const row = cfg.numKeyValueHeads * cfg.headDim;
    this.k = [];
    this.v = [];
    try {
      for (let i = 0; i < cfg.numHiddenLayers; i++) {
        this.k.push(g.empty([maxLen, row], 'f32', `kv.k.${i}`));
        this.v.push(g.empty([maxLen, row], 'f32', `kv.v.${i}`));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** Bytes the cache holds on the GPU. */
  get bytes(): number {
    return 2 * this.cfg.numHiddenLayers * this.maxLen * this.cfg.numKeyValueHeads * this.cfg.headDim * 4;
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
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
  const L = s.h.shape[1], H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, Dh = c.headDim;
  const past = cache.len, total = past + L;
  if (total > cache.maxLen) fail(`generation: ${total} tokens exceed the KV cache of ${cache.maxLen}`, ExitCode.USAGE);
  const g = s.h.gpu;
  const x = rmsNorm(s.h, w.input_layernorm, c.rmsNormEps);
  const q0 = w.self_attn.q_proj.forward(x), k0 = w.self_attn.k_proj.forward(x), v0 = w.self_attn.v_proj.forward(x);
  x.dispose();
  const q1 = q0.reshape([1, L, H, Dh]), k1 = k0.reshape([1, L, Hkv, Dh]);
  q0.dispose(); k0.dispose();
  const q = applyRopeHalf(q1, s.cos, s.sin), k = applyRopeHalf(k1, s.cos, s.sin);
  q1.dispose(); k1.dispose();
  const rowBytes = Hkv * Dh * 4;
  g.copyInto(k, cache.k[i], past * rowBytes);
  g.copyInto(v0, cache.v[i], past * rowBytes);
  k.dispose(); v0.dispose();
  const kr = cache.k[i].rows(0, total), vr = cache.v[i].rows(0, total);
  const kAll = kr.reshape([1, total, Hkv, Dh]), vAll = vr.reshape([1, total, Hkv, Dh]);
  kr.dispose(); vr.dispose();
  const a = attention(q, kAll, vAll, { causal: true });
  q.dispose(); kAll.dispose(); vAll.dispose();
  return layerOutput(c, w, s.h, a);
}

/**
 * Step1X-Edit's Qwen25VL_7b_Embedder.forward after tokenisation (modules/conditioner.py):
 * for each prompt (officially [instruction, ""], each run alone with B = 1) take the final normed
 * hidden state [L, D], drop the first 217 tokens (system turn + PREFIX, hard-coded), keep at most
 * max_length (640) rows, zero-pad, mask 1 on the kept span (masked `!` tokens included), and round to
 * bf16 because the official output buffer is bf16.
 */
import type { Gpu } from '../../runtime/gpu.js';
import { roundToBf16 } from '../../runtime/half.js';
import { fail } from '../../errors.js';
import type { QwenInput, QwenTrace, QwenVL } from './model.js';

export const STEP1X_MAX_LENGTH = 640;
export const STEP1X_DROP_PREFIX_TOKENS = 217;

export interface EmbedderOptions {
  maxLength?: number;
  dropPrefixTokens?: number;
  trace?: QwenTrace;
  /** Sees each prompt's final normed hidden state [L, D] before the crop (golden `mid.final_norm`). */
  onFinalNorm?(seq: number, data: Float32Array, L: number): Promise<void> | void;
}

export interface EmbedderOutput {
  /** [B, maxLength, D] f32 holding bf16-rounded values (what the official embedder returns). */
  embeddings: Float32Array;
  /** Same before bf16 rounding (the f32 reference `out.embedder_out`). */
  embeddingsF32: Float32Array;
  /** [B, maxLength] 0/1. */
  mask: Int32Array;
  batch: number;
  maxLength: number;
  hidden: number;
}

/** Crop/pad one prompt's final states [L, D] into row `b` of the outputs (conditioner.py lines `embs[idx, :n] = emb[0, 217:][:max]`). */
export function cropInto(out: EmbedderOutput, b: number, finalNorm: Float32Array, L: number, drop: number): void {
  const D = out.hidden, M = out.maxLength;
  const n = Math.min(M, L - drop);
  if (n <= 0) fail(`embedder: prompt ${b} has ${L} tokens, not more than the ${drop} dropped prefix tokens`);
  const src = finalNorm.subarray(drop * D, (drop + n) * D);
  out.embeddingsF32.set(src, b * M * D);
  out.embeddings.set(roundToBf16(src), b * M * D);
  out.mask.fill(1, b * M, b * M + n);
}

export async function embedPrompts(g: Gpu, model: QwenVL, inputs: QwenInput[], opts: EmbedderOptions = {}): Promise<EmbedderOutput> {
  const M = opts.maxLength ?? STEP1X_MAX_LENGTH, drop = opts.dropPrefixTokens ?? STEP1X_DROP_PREFIX_TOKENS;
  const D = model.cfg.text.hiddenSize, B = inputs.length;
  const out: EmbedderOutput = {
    embeddings: new Float32Array(B * M * D), embeddingsF32: new Float32Array(B * M * D), mask: new Int32Array(B * M),
    batch: B, maxLength: M, hidden: D,
  };
  // the final states go when this scope closes: only the host copies are kept
  await g.scopeAsync(async () => {
    const finals = await model.forward(g, inputs, opts.trace);
    for (let b = 0; b < B; b++) {
      const L = inputs[b].inputIds.length;
      const data = await g.readF32(finals[b]);
      if (opts.onFinalNorm) await opts.onFinalNorm(b, data, L);
      cropInto(out, b, data, L, drop);
    }
  });
  return out;
}

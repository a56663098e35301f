/**
 * The thinker's next-token rule: the logits-processor chain transformers' `generate()` builds for
 * `call_model` (`max_new_tokens=128, do_sample=True, top_p=0.9, temperature=0.7, eos_token_id=151645` plus the
 * text encoder's generation_config.json), pinned by the golden case `v12_sampling_tiny`:
 *
 *   RepetitionPenalty(1.05) → Temperature(0.7) → TopK(50) → TopP(0.9, min_tokens_to_keep 1) → softmax → draw
 *
 * all in f32 as torch computes it on CPU: the penalty touches each id of the history once (s < 0 → s·1.05,
 * else s/1.05), a division by a Python scalar is a multiplication by its f32 reciprocal (torch's CPU
 * `div_true` with a scalar divisor), top-k keeps every score ≥ the k-th largest (ties kept), top-p sorts
 * ascending (equal scores in libstdc++ std::sort's order, as torch's CPU sort leaves them) and removes while
 * the cumulative softmax ≤ 1 − p (f32), always keeping the largest.
 * Greedy mode (the goldens' `do_sample=False`) keeps only the repetition penalty and takes the first argmax.
 *
 * The draw is ours, not torch's (`torch.multinomial` on the global CUDA/CPU generator cannot be reproduced):
 * u = Xoshiro128(seed).uniform() (src/pipeline/rng.ts), the token is the first id whose cumulative probability
 * (in vocabulary order, f64 sum of the f32 probabilities) exceeds u·total.
 */
import { Xoshiro128 } from '../rng.js';
import { stdSort } from './std-sort.js';

export interface SamplingParams {
  repetitionPenalty: number;
  temperature: number;
  topK: number;
  topP: number;
}

/** The chain `call_model` gets (generation_config.json sets no top_k, so GenerationConfig's default 50 applies). */
export const THINKER_SAMPLING: SamplingParams = { repetitionPenalty: 1.05, temperature: 0.7, topK: 50, topP: 0.9 };

const f32 = Math.fround;

/** RepetitionPenaltyLogitsProcessor, in place on f32 scores. */
export function applyRepetitionPenalty(scores: Float32Array, history: ArrayLike<number>, penalty: number): void {
  if (penalty === 1) return;
  const mul = f32(penalty), inv = f32(1 / f32(penalty));
  const seen = new Set<number>();
  for (let i = 0; i < history.length; i++) {
    const id = history[i];
    if (seen.has(id) || id < 0 || id >= scores.length) continue;
    seen.add(id);
    const s = scores[id];
    scores[id] = s < 0 ? f32(s * mul) : f32(s * inv);
  }
}

/** TemperatureLogitsWarper (s / T as s · f32(1/T)). */
export function applyTemperature(scores: Float32Array, temperature: number): void {
  const inv = f32(1 / f32(temperature));
  for (let i = 0; i < scores.length; i++) scores[i] = f32(scores[i] * inv);
}

/** TopKLogitsWarper: scores below the k-th largest become −inf (NaN-free scores: one pass keeping the k largest). */
export function applyTopK(scores: Float32Array, k: number): void {
  const kk = Math.min(Math.max(k, 1), scores.length);
  let kth: number;
  if (scores.some(Number.isNaN)) kth = Float32Array.from(scores).sort()[scores.length - kk];
  else {
    const top: number[] = []; // ascending, at most kk values
    for (let i = 0; i < scores.length; i++) {
      const v = scores[i];
      if (top.length === kk && v <= top[0]) continue;
      if (top.length === kk) top.shift();
      let j = 0;
      while (j < top.length && top[j] < v) j++;
      top.splice(j, 0, v);
    }
    kth = top[0];
  }
  for (let i = 0; i < scores.length; i++) if (scores[i] < kth) scores[i] = -Infinity;
}

/** f32 softmax of `x` (exp(x − max) / Σ, −inf → 0). */
export function softmaxF32(x: ArrayLike<number>): Float32Array {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  const out = new Float32Array(x.length);
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    out[i] = Math.exp(x[i] - m);
    sum = f32(sum + out[i]);
  }
  for (let i = 0; i < x.length; i++) out[i] = f32(out[i] / sum);
  return out;
}

/**
 * TopPLogitsWarper (ascending sort as torch's CPU `sort` orders it, equal scores included: libstdc++ std::sort,
 * std-sort.ts; remove while cumsum ≤ 1 − p; the largest always stays). The −inf entries (top-k's) sort first
 * and add exactly 0 to the sum, so when the finite scores are all distinct any sort of them gives torch's
 * order; only finite ties (or NaN / +inf) need the full std::sort replay over all V entries (≈ 0.3 s at
 * V = 152064 on the host, against ≈ 1 ms for the short path).
 */
export function applyTopP(scores: Float32Array, p: number): void {
  const finite: number[] = [];
  let odd = false;
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (s === -Infinity) continue;
    if (Number.isFinite(s)) finite.push(i);
    else odd = true;
  }
  finite.sort((a, b) => scores[a] - scores[b]);
  for (let r = 1; r < finite.length && !odd; r++) if (scores[finite[r]] === scores[finite[r - 1]]) odd = true;
  if (odd) {
    const order = stdSort(Array.from(scores.keys()), (a, b) => scores[a] < scores[b] || (!Number.isNaN(scores[a]) && Number.isNaN(scores[b])));
    cutAscending(scores, order, p);
  } else cutAscending(scores, finite, p); // the −inf prefix only adds exact zeros to the cumulative sum
}

function cutAscending(scores: Float32Array, order: number[], p: number): void {
  const probs = softmaxF32(order.map((i) => scores[i]));
  const limit = f32(1 - p);
  let cum = 0;
  for (let r = 0; r < order.length - 1; r++) {
    cum = f32(cum + probs[r]);
    if (cum <= limit) scores[order[r]] = -Infinity;
  }
}

/** The processed scores of one step (a copy); greedy applies only the repetition penalty. */
export function processScores(logits: ArrayLike<number>, history: ArrayLike<number>, params: SamplingParams, greedy: boolean): Float32Array {
  const s = Float32Array.from(logits);
  applyRepetitionPenalty(s, history, params.repetitionPenalty);
  if (greedy) return s;
  if (params.temperature !== 1) applyTemperature(s, params.temperature);
  if (params.topK > 0) applyTopK(s, params.topK);
  if (params.topP < 1) applyTopP(s, params.topP);
  return s;
}

/** First index of the maximum (torch.argmax). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** A seeded token drawer over processed scores (see the header for the rule). */
export class TokenSampler {
  private rng: Xoshiro128;
  constructor(seed: number) {
    this.rng = new Xoshiro128(seed);
  }
  draw(scores: Float32Array): number {
    const probs = softmaxF32(scores);
    let total = 0;
    for (let i = 0; i < probs.length; i++) total += probs[i];
    const u = this.rng.uniform() * total;
    let cum = 0, last = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] <= 0) continue;
      last = i;
      cum += probs[i];
      if (cum > u) return i;
    }
    return last;
  }
}

/**
 * The `choose` of QwenGenerator.generate for the thinker: greedy (argmax of the penalised scores) or the
 * sampling chain with a seeded drawer. `onScores` sees each step's processed scores.
 */
export function thinkerChooser(greedy: boolean, seed = 0, params: SamplingParams = THINKER_SAMPLING,
  onScores?: (processed: Float32Array) => void): (logits: Float32Array, history: readonly number[]) => number {
  const sampler = greedy ? null : new TokenSampler(seed);
  return (logits, history) => {
    const scores = processScores(logits, history, params, greedy);
    onScores?.(scores);
    return sampler ? sampler.draw(scores) : argmax(scores);
  };
}

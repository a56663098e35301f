/**
 * Flow-matching sampler of the official `sampling.py` + `ImageGenerator.denoise` (inference.py).
 *
 * Pure host code: the schedule, classifier-free guidance and the Euler update are tiny compared with a
 * DiT forward, so they run on the host in f32 with the same rounding order as PyTorch's f32 CPU ops
 * (`Math.fround` after every op). The DiT is abstracted as a `Predictor`: `predict(img, t)` returns the
 * velocity for all image tokens; `src/models/dit.ts` provides one for `Step1XEdit`.
 *
 * Shapes (packed tokens): N noisy tokens, 2N image tokens = [noise tokens | reference tokens], C = 64.
 */
import { ExitCode, fail } from '../errors.js';
import { imageSeqLen, prepare, unpack2x2Host } from './prepare.js';
import type { DitVersion } from '../models/dit-config.js';

const fr = Math.fround;

/** `torch.linspace(1, 0, steps)` in f32 (the scalar branch of PyTorch's CPU linspace kernel). */
export function linspaceF32(start: number, end: number, steps: number): Float32Array {
  if (!Number.isInteger(steps) || steps < 1) fail(`linspace: steps must be a positive integer, got ${steps}`);
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = start;
    return out;
  }
  const s = fr(start), e = fr(end);
  const step = fr(fr(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) out[i] = i < halfway ? fr(s + fr(step * i)) : fr(e - fr(step * (steps - i - 1)));
  return out;
}

/** mu for `image_seq_len`: the line through (256, base_shift) and (4096, max_shift), in f64 like Python. */
export function shiftMu(imageSeqLen: number, baseShift = 0.5, maxShift = 1.15): number {
  const m = (maxShift - baseShift) / (4096 - 256);
  const b = baseShift - m * 256;
  return m * imageSeqLen + b;
}

/**
 * `time_shift(mu, 1.0, t)` on an f32 tensor exactly as PyTorch evaluates
 * `math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)`: `1 / t` and `e / x` are `reciprocal(x) * s`
 * (Tensor.__rtruediv__), the Python scalar is cast to f32, each op rounds to f32. t = 0 gives 0.
 */
export function timeShiftF32(mu: number, t: Float32Array): Float32Array {
  const e = fr(Math.exp(mu));
  const out = new Float32Array(t.length);
  for (let i = 0; i < t.length; i++) {
    const a = fr(fr(1 / t[i]) - 1); // (1/t - 1) ** 1.0 is exact
    const d = fr(e + a);
    out[i] = fr(fr(1 / d) * e);
  }
  return out;
}

/**
 * `sampling.get_schedule(num_steps, image_seq_len, shift)`: num_steps + 1 values from 1 down to 0.
 * `imageSeqLen` counts the noisy packed tokens only: (H/16)·(W/16) for an H×W image.
 */
export function getSchedule(numSteps: number, imageSeqLen: number, opts: { baseShift?: number; maxShift?: number; shift?: boolean } = {}): Float32Array {
  if (!Number.isInteger(numSteps) || numSteps < 1) fail(`getSchedule: numSteps must be an integer >= 1, got ${numSteps}`);
  if (!(imageSeqLen > 0)) fail(`getSchedule: imageSeqLen must be > 0, got ${imageSeqLen}`);
  const t = linspaceF32(1, 0, numSteps + 1);
  if (opts.shift === false) return t;
  return timeShiftF32(shiftMu(imageSeqLen, opts.baseShift ?? 0.5, opts.maxShift ?? 1.15), t);
}

/** `ImageGenerator.process_diff_norm`: n**k if n > 1, 1 if n < 1, n (= 1) otherwise; f32. */
export function processDiffNorm(n: number, k: number): number {
  if (n > 1) return fr(Math.pow(n, k));
  return n < 1 ? 1 : n;
}

/**
 * CFG on one half-batch: cond, uncond [L, C] (flattened, `tokens * channels`). Returns
 * `uncond + g·(cond − uncond)`, or, when `diffNormK` is given (the `t_curr > timesteps_truncate`
 * branch), `uncond + g·(cond − uncond) / process_diff_norm(‖cond − uncond‖₂ over C, k)` per token.
 */
export function cfgCombine(cond: Float32Array, uncond: Float32Array, channels: number, g: number, diffNormK?: number): Float32Array {
  if (cond.length !== uncond.length || cond.length % channels !== 0)
    fail(`cfgCombine: cond (${cond.length}) and uncond (${uncond.length}) must be equal multiples of channels ${channels}`);
  const out = new Float32Array(cond.length);
  const gf = fr(g);
  for (let r = 0; r < cond.length / channels; r++) {
    const o = r * channels;
    let div = 1;
    if (diffNormK !== undefined) {
      let ss = 0;
      for (let c = 0; c < channels; c++) {
        const d = fr(cond[o + c] - uncond[o + c]);
        ss += d * d;
      }
      div = processDiffNorm(fr(Math.sqrt(ss)), diffNormK);
    }
    for (let c = 0; c < channels; c++) {
      const d = fr(cond[o + c] - uncond[o + c]);
      let s = fr(gf * d);
      if (diffNormK !== undefined) s = fr(s / div);
      out[o + c] = fr(uncond[o + c] + s);
    }
  }
  return out;
}

/** Anything that predicts the velocity of all image tokens: img [B, 2N, C] → [B, 2N, C] at time t. */
export interface Predictor {
  predict(img: Float32Array, batch: number, t: number): Promise<Float32Array>;
}

export interface StepInfo {
  /** 0-based step index and the step count. */
  step: number;
  total: number;
  tCurr: number;
  tPrev: number;
  /** DiT output [B, 2N, C] (B = 2 with CFG: row 0 cond, row 1 uncond). */
  predRaw: Float32Array;
  /** Guided prediction [1, 2N, C]. */
  predGuided: Float32Array;
  /** State after the step [1, 2N, C]: noisy half updated, reference half unchanged. */
  latentAfter: Float32Array;
}

export interface DenoiseOptions {
  timesteps: ArrayLike<number>;
  /** CFG scale; -1 disables CFG (batch of 1). The official default in inference.py is 6.0. */
  cfgGuidance: number;
  /**
   * Steps with t_curr > this use the diff-norm CFG. The current official generate_image passes 0.93 (the
   * first step or two); the May 2025 code passed 1.0 (never). Default 1.0: callers state it.
   */
  timestepsTruncate?: number;
  /**
   * Rows hold [noise tokens | reference tokens] and only the first half is updated (edit, the default);
   * false: noise tokens alone, all updated (`denoise_t2i`).
   */
  reference?: boolean;
  diffNormExponent?: number;
  /** Packed channels C (64). */
  channels?: number;
  onStep?: (info: StepInfo) => void | Promise<void>;
  /** Called after each Euler step on the state (noisy half first) with t_next, before onStep (region masks). */
  afterStep?: (state: Float32Array, tNext: number) => void;
  /** Checked before every step; throw from it (or return true) to stop. */
  shouldStop?: () => boolean;
}

/**
 * `ImageGenerator.denoise`: `img` is the state [1, 2N, C] (noise tokens then reference tokens; a
 * cond/uncond batch [2, 2N, C] from `prepare` is accepted and its first row used, as the official
 * loop does after the first step). Each step runs the predictor on [state, state] (CFG), combines,
 * and updates only the first N tokens: x += (t_prev − t_curr)·pred. Returns the noisy half [1, N, C].
 * With `reference: false` it is `denoise_t2i`: the state is [1, N, C] and every token is updated.
 * (The current official loop guides only the first half; the reference half's guided values are never
 * used, so guiding every token and updating the first half is the same computation.)
 */
export async function denoise(model: Predictor, img: Float32Array, batch: number, opts: DenoiseOptions): Promise<Float32Array> {
  const C = opts.channels ?? 64;
  const cfg = opts.cfgGuidance !== -1;
  const trunc = opts.timestepsTruncate ?? 1.0;
  const k = opts.diffNormExponent ?? 0.4;
  const ts = Array.from(opts.timesteps);
  if (ts.length < 2) fail(`denoise: need at least 2 timesteps, got ${ts.length}`);
  const withRef = opts.reference ?? true;
  if (!(batch >= 1) || img.length % (batch * (withRef ? 2 : 1) * C) !== 0)
    fail(`denoise: img of ${img.length} values is not [${batch}, ${withRef ? '2N' : 'N'}, ${C}]`);
  const rowLen = img.length / batch;
  const L = rowLen / C; // 2N image tokens (N for t2i)
  const half = withRef ? L / 2 : L; // the noise tokens, updated by each step
  // The official loop keeps row 0 (img[: B/2]) after the first step; prepare's rows are identical.
  let state: Float32Array = img.slice(0, rowLen);
  for (let s = 0; s + 1 < ts.length; s++) {
    if (opts.shouldStop?.()) fail('denoise: stopped', ExitCode.INTERRUPTED);
    const tCurr = ts[s], tPrev = ts[s + 1];
    const B = cfg ? 2 : 1;
    const input = new Float32Array(B * rowLen);
    for (let b = 0; b < B; b++) input.set(state, b * rowLen);
    const pred = await model.predict(input, B, tCurr);
    if (pred.length !== B * rowLen) fail(`denoise: predictor returned ${pred.length} values, expected ${B * rowLen}`);
    const guided = cfg
      ? cfgCombine(pred.subarray(0, rowLen), pred.subarray(rowLen), C, opts.cfgGuidance, tCurr > trunc ? k : undefined)
      : pred.slice(0, rowLen);
    // The Python float (t_prev - t_curr) is cast to f32 when multiplied with the f32 tensor.
    const dt = fr(tPrev - tCurr);
    const next = state.slice();
    let bad = 0;
    for (let i = 0; i < half * C; i++) {
      const v = fr(state[i] + fr(dt * guided[i]));
      next[i] = v;
      if (v - v !== 0) bad++; // NaN or ±Infinity
    }
    // a non-finite latent decodes to an all-black image: stop here with the step named instead
    if (bad)
      fail(`sampling: the latent became non-finite at step ${s + 1} of ${ts.length - 1} (${bad} of ${half * C} values NaN or infinite); the weights, a LoRA or the GPU computation are damaged`, ExitCode.GPU);
    state = next;
    opts.afterStep?.(state, tPrev);
    await opts.onStep?.({ step: s, total: ts.length - 1, tCurr, tPrev, predRaw: pred, predGuided: guided, latentAfter: state });
  }
  return state.slice(0, half * C);
}

/** What `sampleLatent` needs from the DiT: Step1XEdit.predictor has this shape. */
export interface PredictorSource {
  predictor(c: { llmEmbedding: Float32Array; mask: Float32Array; imgIds: Float32Array; txtIds: Float32Array; T: number; L: number }): Predictor & { dispose(): void };
}

export interface SampleOptions {
  /** the checkpoint version: sets the reference tokens' ids (prepare.ts referenceIds) */
  version: DitVersion;
  numSteps: number;
  /** CFG scale (inference.py default 6.0); -1 = no CFG (conditioning row 0 only). */
  cfgGuidance: number;
  timestepsTruncate?: number;
  onStep?: DenoiseOptions['onStep'];
  shouldStop?: () => boolean;
}

/**
 * `generate_image` between the embedder and the VAE decoder: pack noise + reference latent
 * [1, 16, H/8, W/8], ids, get_schedule(num_steps, (H/16)(W/16)), denoise with CFG over the
 * [cond, uncond] conditioning (llmEmbedding [2, T, Cin], mask [2, T]), unpack. Returns the latent
 * [1, 16, H/8, W/8] and the schedule.
 */
export async function sampleLatent(
  dit: PredictorSource,
  noise: Float32Array,
  refLatent: Float32Array,
  latentShape: readonly number[],
  llmEmbedding: Float32Array,
  mask: Float32Array,
  T: number,
  opts: SampleOptions,
): Promise<{ latent: Float32Array; timesteps: Float32Array }> {
  const [, C, Hl, Wl] = latentShape;
  const batch = opts.cfgGuidance === -1 ? 1 : 2;
  if (mask.length % T || mask.length / T < batch) fail(`sampleLatent: mask has ${mask.length} values, expected [${batch}, ${T}]`);
  const p = prepare(noise, refLatent, latentShape, batch, T, opts.version);
  const timesteps = getSchedule(opts.numSteps, imageSeqLen(Hl, Wl));
  const predictor = dit.predictor({ llmEmbedding, mask, imgIds: p.imgIds, txtIds: p.txtIds, T, L: 2 * p.h * p.w });
  try {
    const packed = await denoise(predictor, p.img, batch, {
      timesteps, cfgGuidance: opts.cfgGuidance, timestepsTruncate: opts.timestepsTruncate ?? 1.0,
      channels: p.channels, onStep: opts.onStep, shouldStop: opts.shouldStop,
    });
    return { latent: unpack2x2Host(packed, 1, C, p.h, p.w), timesteps };
  } finally {
    predictor.dispose();
  }
}

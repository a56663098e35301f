/**
 * Step1X-Edit v1.2's sampler (the fork's Step1XEditPipelineV1P2.__call__ with FlowMatchEulerDiscreteScheduler,
 * use_dynamic_shifting, time_shift_type "exponential"):
 *   sigmas = linspace(1, 1/S, S) (f64) → f32 → exp(mu) / (exp(mu) + (1/σ − 1)) with mu of the packed noise
 *   token count (256 → 0.5 … 4096 → 1.15), timesteps = 1000 σ, a final σ = 0;
 *   each step: the DiT on cat(latents, ref latent) at t/1000, separately for the prompt and the negative
 *   prompt (their text lengths differ, no padding), noise tokens kept;
 *   pred = neg + s·(cond − neg) / max(1, ‖cond − neg‖₂^0.4) per token at EVERY step (the fork's truncation
 *   t > 0.93 compares t in [0, 1000]); latents += (σ_next − σ)·pred in f32.
 */
import { fail } from '../errors.js';
import { cfgCombine, shiftMu } from './sampling.js';

const fr = Math.fround;

/** The fork's defaults (pipeline_step1x_edit_v1p2.py): 28 steps, true CFG 6, size level 1024, processor pixels 256·28² … 400·28². */
export const V12_DEFAULTS = { steps: 28, cfg: 6.0, sizeLevel: 1024, processorPixels: { min_pixels: 200704, max_pixels: 313600 } } as const;

export interface V12Schedule {
  /** [S + 1] f32, the last 0 */
  sigmas: Float32Array;
  /** [S] f32, 1000 σ */
  timesteps: Float32Array;
}

export function v12Schedule(steps: number, imageSeqLen: number, shift = { base: 0.5, max: 1.15 }): V12Schedule {
  if (!Number.isInteger(steps) || steps < 1) fail(`v12Schedule: steps must be a positive integer, got ${steps}`);
  const mu = shiftMu(imageSeqLen, shift.base, shift.max);
  const e = fr(Math.exp(mu));
  const sigmas = new Float32Array(steps + 1);
  for (let i = 0; i < steps; i++) {
    const s = fr(steps === 1 ? 1 : 1 + ((1 / steps - 1) * i) / (steps - 1)); // np.linspace, then float32
    const a = fr(fr(1 / s) - 1);
    sigmas[i] = fr(e / fr(e + a));
  }
  const timesteps = Float32Array.from(sigmas.subarray(0, steps), (s) => fr(s * 1000));
  return { sigmas, timesteps };
}

/** The velocity of the noise tokens [N, C] for one prompt at transformer time t (= timestep / 1000). */
export type V12Predict = (side: 'cond' | 'uncond', latents: Float32Array, t: number) => Promise<Float32Array>;

export interface V12StepInfo {
  step: number;
  predCond: Float32Array;
  predUncond: Float32Array;
  predGuided: Float32Array;
  latentAfter: Float32Array;
}

/** The denoising loop; `latents` [N, C] packed noise tokens (consumed). Returns the final latents. */
export async function v12Denoise(predict: V12Predict, latents: Float32Array, sched: V12Schedule, o: {
  cfg: number; channels: number; normPower?: number; onStep?: (s: V12StepInfo) => void | Promise<void>;
  /** In place on the latents after step k, before onStep (a region mask's blend at σ_next). */
  afterStep?: (x: Float32Array, sigmaNext: number) => void;
}): Promise<Float32Array> {
  let x = latents;
  for (let k = 0; k < sched.timesteps.length; k++) {
    const t = fr(sched.timesteps[k] / 1000);
    const cond = await predict('cond', x, t);
    const uncond = await predict('uncond', x, t);
    const guided = cfgCombine(cond, uncond, o.channels, o.cfg, o.normPower ?? 0.4);
    const dt = fr(sched.sigmas[k + 1] - sched.sigmas[k]);
    const next = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) next[i] = fr(x[i] + fr(dt * guided[i]));
    x = next;
    o.afterStep?.(x, sched.sigmas[k + 1]);
    await o.onStep?.({ step: k, predCond: cond, predUncond: uncond, predGuided: guided, latentAfter: x });
  }
  return x;
}

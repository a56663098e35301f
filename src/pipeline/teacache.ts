/**
 * TeaCache (the official `--teacache`, modules/multigpu.py `teacache_transformer`): skip the DiT's
 * transformer blocks on steps whose input barely changed, reusing the residual the blocks added at the
 * last step that ran.
 *
 * Rule (golden `teacache_tiny`, ../shared/golden/README.md "Generator version 2"):
 *   tracked = double_blocks[0].img_norm1(img_in(img))   LayerNorm without affine, eps 1e-6, NO modulation,
 *                                                       over all image tokens of both CFG rows
 *   rel     = mean|tracked − prev| / mean|prev|
 *   acc    += poly(rel)                                  np.poly1d(COEFFICIENTS), highest power first
 *   steps 0 and S−1 always run (acc = 0); otherwise skip while acc < threshold, else run and acc = 0
 *   prev    = tracked                                   every step, run or skipped
 * A skipped step feeds img_in(img) + residual to final_layer, where residual = the image-token output of
 * the last single block minus img_in(img) at the last step that ran (kept on the GPU by the DiT).
 *
 * This file is the host-side decision only; `Step1XEdit.forward` computes `tracked` and applies the
 * residual when given a `BlockCache` (src/models/dit.ts).
 */
import { ExitCode, Step1xError } from '../errors.js';

/** The official rescale polynomial (FLUX TeaCache), highest power first. */
export const TEACACHE_COEFFICIENTS = [498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861] as const;
/** The official default `rel_l1_thresh`. */
export const TEACACHE_DEFAULT_THRESHOLD = 0.2;

const fr = Math.fround;

/** np.poly1d(c)(x) in f64 (Horner, as numpy evaluates it). */
export function poly1d(c: readonly number[], x: number): number {
  let y = 0;
  for (const a of c) y = y * x + a;
  return y;
}

/**
 * `(a − b).abs().mean() / b.abs().mean()` as PyTorch computes it on f32 tensors: each mean rounded to
 * f32 (the sums here in f64, closer to torch's pairwise f32 sum than a running f32 sum), then an f32
 * division; `.item()` hands the f32 value to Python.
 */
export function relL1(cur: Float32Array, prev: Float32Array): number {
  if (cur.length !== prev.length || cur.length === 0) throw new Step1xError(`teacache: tracked input of ${cur.length} values after ${prev.length}`, ExitCode.GPU);
  let d = 0, p = 0;
  for (let i = 0; i < cur.length; i++) {
    d += Math.abs(fr(cur[i] - prev[i]));
    p += Math.abs(prev[i]);
  }
  return fr(fr(d / cur.length) / fr(p / cur.length));
}

/** One step's decision, as the golden records it (`teacache.calc/rel_l1/accumulated`). */
export interface TeaCacheDecision {
  step: number;
  /** The blocks ran (false: cached residual added). */
  calc: boolean;
  /** Relative L1 distance to the previous step's tracked input (0 at step 0). */
  rel: number;
  /** Accumulator after this step's decision (0 when the blocks ran). */
  accumulated: number;
}

/**
 * The per-run TeaCache state machine. One instance per denoise run of `numSteps` steps; `decide` is
 * called once per DiT forward (one per step: the CFG rows go through one forward) in step order.
 */
export class TeaCache {
  readonly decisions: TeaCacheDecision[] = [];
  private prev: Float32Array | undefined;
  private acc = 0;
  private cnt = 0;

  constructor(
    readonly numSteps: number,
    readonly threshold = TEACACHE_DEFAULT_THRESHOLD,
    readonly coefficients: readonly number[] = TEACACHE_COEFFICIENTS,
  ) {
    if (!Number.isInteger(numSteps) || numSteps < 1) throw new Step1xError(`teacache: numSteps must be a positive integer, got ${numSteps}`, ExitCode.USAGE);
    if (!(threshold >= 0) || !Number.isFinite(threshold)) throw new Step1xError(`teacache: threshold must be a number >= 0, got ${threshold}`, ExitCode.USAGE);
  }

  /** Whether the blocks run for this forward, given its tracked input (host copy; kept as `prev`). */
  decide(tracked: Float32Array): boolean {
    const step = this.cnt;
    let calc: boolean;
    // rel is recorded on every step with a previous input (the last step too), used only in between
    const rel = this.prev && step > 0 ? relL1(tracked, this.prev) : 0;
    if (step === 0 || step === this.numSteps - 1 || !this.prev) {
      calc = true;
      this.acc = 0;
    } else {
      this.acc += poly1d(this.coefficients, rel);
      if (this.acc < this.threshold) calc = false;
      else {
        calc = true;
        this.acc = 0;
      }
    }
    this.prev = tracked;
    this.decisions.push({ step, calc, rel, accumulated: this.acc });
    this.cnt = (this.cnt + 1) % this.numSteps; // the official counter wraps for the next run
    return calc;
  }

  /** Steps whose blocks were skipped so far. */
  get skipped(): number {
    return this.decisions.filter((d) => !d.calc).length;
  }
}

export interface CacheOption {
  kind: 'teacache';
  threshold: number;
}

/** `--cache teacache[:THRESHOLD]` (or `none`) → the option, with a one-line usage error otherwise. */
export function parseCacheOption(v: string | undefined): CacheOption | undefined {
  if (v === undefined || v === 'none' || v === '') return undefined;
  const m = /^teacache(?::(.*))?$/.exec(v.trim());
  if (!m) throw new Step1xError(`--cache must be "teacache", "teacache:THRESHOLD" or "none", got "${v}"`, ExitCode.USAGE);
  if (m[1] === undefined) return { kind: 'teacache', threshold: TEACACHE_DEFAULT_THRESHOLD };
  const t = Number(m[1]);
  if (m[1].trim() === '' || !Number.isFinite(t) || t < 0 || t > 10) throw new Step1xError(`--cache teacache:THRESHOLD needs a number in [0, 10] (official default ${TEACACHE_DEFAULT_THRESHOLD}), got "${m[1]}"`, ExitCode.USAGE);
  return { kind: 'teacache', threshold: t };
}

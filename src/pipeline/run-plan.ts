/**
 * The plan a run follows — planEdit (pipeline/plan.ts), the one `step1x plan` prints — and its re-plan on
 * GPU out-of-memory. The plan sets the model host's mode (all models kept, or loaded per stage) and each
 * stage's loader budget (stageBudget). When the device refuses an allocation anyway (a real GPU's memory
 * is unknown to WebGPU, so without --vram-budget everything is planned resident), the failing stage asks
 * `replan`: a new plan from the same planner under a budget below what the device held when it failed
 * (OOM_MARGIN less than the bytes allocated then, or than the old plan's budget when that is smaller), which
 * the rest of the run follows; one line says what changed. `step1x plan --vram-budget <that budget>` prints
 * the same plan (test/pipeline.test.ts compares them).
 */
import type { Gpu } from '../runtime/gpu.js';
import { ExitCode, Step1xError } from '../errors.js';
import type { ModelFiles } from '../io/model-files.js';
import type { ModelHost } from './model-host.js';
import { planEdit, stageBudget, type PlanOptions, type VramPlan } from './plan.js';

/** Share of the bytes held at an out-of-memory failure left out of the re-planned budget. */
export const OOM_MARGIN = 0.1;

type PlanFiles = Pick<ModelFiles, 'dit' | 'vae' | 'qwenDir' | 'hparams' | 'diffusers'>;
type LoaderStage = 'reason' | 'embed' | 'sample';

const gb = (x: number) => (x >= 1e9 ? `${(x / 1e9).toFixed(2)} GB` : `${(x / 1e6).toFixed(1)} MB`);

/** What streams under a plan, in words: "DiT streams 20 blocks, Qwen2.5-VL streams text layers". */
export function planSummary(p: VramPlan): string {
  const name = { dit: 'DiT', qwen: 'Qwen2.5-VL', vae: 'VAE' } as const;
  // the thinker's stage streams what the embed stage does (one loaded Qwen): said once
  const streams = p.stages.filter((s) => s.streams.length && s.stage !== 'reason').map((s) => `${name[s.model]} streams ${s.streams.join(' and ')}${s.model === 'qwen' ? ' layers' : ''}`);
  const mode = p.keep_resident ? 'models kept across stages' : 'models loaded per stage';
  return streams.length ? `${streams.join(', ')}; ${mode}` : `all weights resident; ${mode}`;
}

export class RunPlan {
  private constructor(
    private readonly g: Gpu,
    private readonly files: PlanFiles,
    private readonly opts: PlanOptions,
    private readonly models: ModelHost,
    /** undefined: no plan fits the budget (the loaders get it whole and say what does not fit). */
    public plan: VramPlan | undefined,
  ) {}

  static async make(g: Gpu, files: PlanFiles, opts: PlanOptions, models: ModelHost): Promise<RunPlan> {
    const r = new RunPlan(g, files, opts, models, await planEdit(files, opts).catch(() => undefined));
    await r.follow();
    return r;
  }

  /** The model host's mode and the dry run's plan peak from the current plan. */
  private async follow(): Promise<void> {
    const p = this.plan;
    this.models.keep = p?.plan_budget_bytes != null && p.keep_resident;
    if (!this.models.keep) await this.models.releaseAll();
    if (this.g.dryrun) this.g.dryrun.planPeak = p?.peak_bytes ?? null;
  }

  /** The budget a stage's loader plans its residency against (undefined: everything resident). */
  budgetFor(stage: LoaderStage): number | undefined {
    return this.plan ? stageBudget(this.plan, stage) : this.opts.budget;
  }

  /**
   * `what` (a model of `stage`) ran out of GPU memory with `heldBytes` allocated: plan again under a
   * budget below that, follow the new plan, and return the stage's new loader budget and the line to say.
   */
  async replan(stage: LoaderStage, what: string, heldBytes: number): Promise<{ budget: number | undefined; note: string }> {
    const before = this.plan?.plan_budget_bytes ?? Infinity;
    const budget = Math.floor(Math.min(heldBytes, before) * (1 - OOM_MARGIN));
    let plan: VramPlan;
    try {
      plan = await planEdit(this.files, { ...this.opts, budget });
    } catch (e) {
      if (!(e instanceof Step1xError) || e.code !== ExitCode.GPU_OOM) throw e;
      const min = (await planEdit(this.files, { ...this.opts, budget: undefined, deviceBytes: undefined })).minimum_budget_bytes;
      throw new Step1xError(`${what}: out of GPU memory with ${gb(heldBytes)} allocated, and no plan fits below that (the edit needs at least ${gb(min)}); try a smaller --size or --weights q8/q4`, ExitCode.GPU_OOM);
    }
    this.plan = plan;
    await this.follow();
    const note = `${what}: out of GPU memory with ${gb(heldBytes)} allocated; re-planned under a ${budget}-byte budget (${gb(budget)}): ${planSummary(plan)}`;
    return { budget: stageBudget(plan, stage), note };
  }
}

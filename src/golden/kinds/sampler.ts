/**
 * Golden kind `sampler` (sampler_tiny): `ImageGenerator.denoise` on the case's DiT. From `in.noise`,
 * `in.latent_ref`, `in.llm_embedding`, `in.mask` and `spec.{height,width,num_steps,cfg_guidance}`:
 * prepare (emits `in.img`, `in.img_ids`, `in.txt_ids` as a check), `timesteps`, every step's `t_vec`,
 * `pred_raw`, `pred_guided`, `latent_after`, `out.latent_packed`, `out.latent`; the `trunc.*` rerun with
 * `timesteps_truncate = spec.extra_truncate` (diff-norm CFG); `out.schedule.n{S}_len{L}` for every pair
 * of `spec.schedule_table`. Later cases (generator version 2) run the current official loop: v1.1 weights
 * (reference ids from the version the weights tell, checked against `spec.version`) and their
 * `timesteps_truncate`; the first ones the May 2025 loop (`timesteps_truncate` 1).
 */
import type { GoldenContext } from '../registry.js';
import type { DitLoadOptions } from '../../models/dit.js';
import { denoise, getSchedule } from '../../pipeline/sampling.js';
import { imageSeqLen, prepare, unpackForImage } from '../../pipeline/prepare.js';
import { fail } from '../../errors.js';
import { loadCaseDit, shapeOfInput } from './dit.js';
import { behaviourOfCase } from '../../pipeline/official.js';
import { guidedForReference } from './guided.js';

export async function run(ctx: GoldenContext): Promise<void> {
  if (ctx.spec?.teacache) return (await import('./teacache.js')).runTeacacheSampler(ctx);
  await runSampler(ctx);
}

export async function runSampler(ctx: GoldenContext, load: DitLoadOptions = {}): Promise<void> {
  const spec = ctx.spec ?? {};
  for (const [S, Ls] of (spec.schedule_table ?? []) as [number, number][]) {
    const key = (spec.schedule_key ?? 'out.schedule.n{num_steps}_len{image_seq_len}').replace('{num_steps}', String(S)).replace('{image_seq_len}', String(Ls));
    ctx.emit(key, getSchedule(S, Ls), [S + 1]);
  }
  const ls = shapeOfInput(ctx, 'in.noise'); // [1, 16, H/8, W/8]
  const [, C, Hl, Wl] = ls;
  const height = spec.height ?? Hl * 8, width = spec.width ?? Wl * 8;
  const [B, T] = shapeOfInput(ctx, 'in.llm_embedding');
  if (B !== 2) fail(`sampler golden: in.llm_embedding must hold the cond/uncond pair, has batch ${B}`);
  const steps = spec.num_steps;
  if (!Number.isInteger(steps) || steps < 1) fail(`sampler golden: spec.num_steps = ${steps}`);
  const ts = getSchedule(steps, imageSeqLen(Hl, Wl));
  ctx.emit('timesteps', ts, [steps + 1]);
  const beh = behaviourOfCase(ctx.caseJson);
  const { model, ckpt } = await loadCaseDit(ctx, load);
  const p = prepare(await ctx.input('in.noise'), await ctx.input('in.latent_ref'), ls, B, T, model.version);
  const L = 2 * p.h * p.w;
  ctx.emit('in.img', p.img, [B, L, p.channels]);
  ctx.emit('in.img_ids', p.imgIds, [B, L, 3]);
  ctx.emit('in.txt_ids', p.txtIds, [B, T, 3]);

  const predictor = model.predictor({ llmEmbedding: await ctx.input('in.llm_embedding'), mask: await ctx.input('in.mask'), imgIds: p.imgIds, txtIds: p.txtIds, T, L });
  try {
    ctx.log(`sampler: ${model.version}, ${steps} steps, cfg ${spec.cfg_guidance}, truncate ${beh.cfgTruncate}, L=${L} T=${T}, ${model.streamedBlocks} blocks streamed`);
    for (const variant of ['', 'trunc.']) {
      if (variant && spec.extra_truncate === undefined) continue;
      const out = await denoise(predictor, p.img, B, {
        timesteps: ts,
        cfgGuidance: spec.cfg_guidance ?? 6.0,
        timestepsTruncate: variant ? spec.extra_truncate : beh.cfgTruncate,
        diffNormExponent: spec.diff_norm_exponent ?? 0.4,
        channels: p.channels,
        onStep: (s) => {
          const k = s.step;
          if (!variant) ctx.emit(`step${k}.t_vec`, new Float32Array(2).fill(s.tCurr), [2]);
          ctx.emit(`${variant}step${k}.pred_raw`, s.predRaw, [2, L, p.channels]);
          ctx.emit(`${variant}step${k}.pred_guided`, ...guidedForReference(beh, s.predGuided, L, p.channels));
          ctx.emit(`${variant}step${k}.latent_after`, s.latentAfter, [1, L, p.channels]);
        },
      });
      ctx.emit(`${variant}out.latent_packed`, out, [1, L / 2, p.channels]);
      if (!variant) {
        const { latent, shape } = unpackForImage(out, 1, height, width, C);
        ctx.emit('out.latent', latent, shape);
      }
    }
  } finally {
    predictor.dispose();
    model.dispose();
    await ckpt.close();
  }
}

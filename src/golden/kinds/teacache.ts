/**
 * The TeaCache variant of golden kind `sampler` (teacache_tiny, generator version 2): the case's `spec`
 * carries `teacache.rel_l1_thresh`; `case.json` `timesteps_truncate` (0.93) and `spec.version` (v1.1,
 * reference ids (1, 1+i, 1+j)) follow the current official code. Emits `teacache.calc` (u8 1/0 per step),
 * `teacache.rel_l1`, `teacache.accumulated`, every step's `t_vec`, `pred_guided` [1, N, 64] (the noisy
 * half, as the current code guides only that), `latent_after`, `out.latent_packed`, `out.latent`, plus
 * `timesteps` and the prepared `in.img*` as checks. `sampler.ts` hands cases with `spec.teacache` here.
 */
import type { GoldenContext } from '../registry.js';
import { denoise, getSchedule } from '../../pipeline/sampling.js';
import { imageSeqLen, prepare, unpackForImage } from '../../pipeline/prepare.js';
import { TEACACHE_COEFFICIENTS, TeaCache } from '../../pipeline/teacache.js';
import { fail } from '../../errors.js';
import { loadCaseDit, shapeOfInput } from './dit.js';

export async function runTeacacheSampler(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec ?? {};
  const tc = spec.teacache ?? {};
  const coeff = ctx.caseJson?.teacache?.coefficients as number[] | undefined;
  if (coeff && (coeff.length !== TEACACHE_COEFFICIENTS.length || coeff.some((c, i) => c !== TEACACHE_COEFFICIENTS[i])))
    fail(`teacache golden: case coefficients [${coeff}] differ from the official ones [${TEACACHE_COEFFICIENTS}]`);
  const thresh = tc.rel_l1_thresh;
  if (typeof thresh !== 'number') fail('teacache golden: spec.teacache.rel_l1_thresh missing');
  const ls = shapeOfInput(ctx, 'in.noise');
  const [, C, Hl, Wl] = ls;
  const height = spec.height ?? Hl * 8, width = spec.width ?? Wl * 8;
  const [B, T] = shapeOfInput(ctx, 'in.llm_embedding');
  if (B !== 2) fail(`teacache golden: in.llm_embedding must hold the cond/uncond pair, has batch ${B}`);
  const steps = spec.num_steps;
  if (!Number.isInteger(steps) || steps < 1) fail(`teacache golden: spec.num_steps = ${steps}`);
  const ts = getSchedule(steps, imageSeqLen(Hl, Wl));
  ctx.emit('timesteps', ts, [steps + 1]);

  const { model, ckpt, cfg } = await loadCaseDit(ctx);
  const version = cfg.version ?? 'v1.0';
  if (spec.version && spec.version !== version) fail(`teacache golden: spec.version ${spec.version}, but the DiT weights are ${version}`);
  const p = prepare(await ctx.input('in.noise'), await ctx.input('in.latent_ref'), ls, B, T, version);
  const L = 2 * p.h * p.w, N = L / 2;
  ctx.emit('in.img', p.img, [B, L, p.channels]);
  ctx.emit('in.img_ids', p.imgIds, [B, L, 3]);
  ctx.emit('in.txt_ids', p.txtIds, [B, T, 3]);
  const cache = new TeaCache(steps, thresh);
  const predictor = model.predictor({ llmEmbedding: await ctx.input('in.llm_embedding'), mask: await ctx.input('in.mask'), imgIds: p.imgIds, txtIds: p.txtIds, T, L, cache });
  try {
    const trunc = ctx.caseJson?.timesteps_truncate ?? spec.timesteps_truncate ?? 1.0;
    ctx.log(`teacache sampler: ${steps} steps, cfg ${spec.cfg_guidance}, ${version}, truncate ${trunc}, threshold ${thresh}`);
    const out = await denoise(predictor, p.img, B, {
      timesteps: ts,
      cfgGuidance: spec.cfg_guidance ?? 6.0,
      timestepsTruncate: trunc,
      channels: p.channels,
      onStep: (s) => {
        const k = s.step;
        ctx.emit(`step${k}.t_vec`, new Float32Array(2).fill(s.tCurr), [2]);
        ctx.emit(`step${k}.pred_guided`, s.predGuided.subarray(0, N * p.channels), [1, N, p.channels]);
        ctx.emit(`step${k}.latent_after`, s.latentAfter, [1, L, p.channels]);
      },
    });
    const d = cache.decisions;
    ctx.log(`teacache: ran the blocks on ${d.filter((x) => x.calc).length} of ${d.length} steps (${cache.skipped} skipped)`);
    ctx.emit('teacache.calc', Uint8Array.from(d, (x) => (x.calc ? 1 : 0)), [d.length]);
    ctx.emit('teacache.rel_l1', Float32Array.from(d, (x) => x.rel), [d.length]);
    ctx.emit('teacache.accumulated', Float32Array.from(d, (x) => x.accumulated), [d.length]);
    ctx.emit('out.latent_packed', out, [1, N, p.channels]);
    const { latent, shape } = unpackForImage(out, 1, height, width, C);
    ctx.emit('out.latent', latent, shape);
  } finally {
    predictor.dispose();
    model.dispose();
    await ckpt.close();
  }
}

/**
 * Golden kind `dit` (dit_tiny): one Step1XEdit.forward on the cond/uncond batch from `dit.safetensors`
 * in the case directory, `spec.dit` / `spec.connector` (step1x.json format) and `in.img`, `in.img_ids`,
 * `in.txt_ids`, `in.timesteps`, `in.t_vec`, `in.llm_embedding`, `in.mask`. Emits `out.pred` and the
 * intermediates: connector (`mid.connector.*`), `mid.time_*`, `mid.vector_in`, `mid.vec`, `mid.ids`,
 * `mid.pe`, `mid.img_embed`, `mid.txt_embed`, every block's streams, `mid.final.in`; also re-packs
 * `in.latent_noisy/ref` into `in.img` / `in.img_ids` / `in.txt_ids` to check prepare().
 * A case with `case.json` `lora` (lora_tiny) loads the DiT with that LoRA file merged (nn/lora.ts) and
 * also emits `out.merged.<weight key>` for every weight the LoRA file names, as the model holds them.
 */
import { join } from 'node:path';
import type { GoldenContext } from '../registry.js';
import { Checkpoint, checkKeys } from '../../io/checkpoint.js';
import { configFromCheckpoint, ditWeightPolicy, expectedDitKeys, type Step1xConfig } from '../../models/dit-config.js';
import { Step1XEdit, type DitLoadOptions } from '../../models/dit.js';
import type { Tap } from '../../models/connector.js';
import { prepare } from '../../pipeline/prepare.js';
import { fail, fmtShape } from '../../errors.js';
import { LoraFile, checkLoras } from '../../nn/lora.js';
import { loadLinearWeight, withWeightPolicy, WEIGHTS_OPTIONS, type WeightsOption } from '../../nn/weight.js';

/** Open, size, key-check and load the case's DiT (shared with the `sampler` kind). */
export async function loadCaseDit(ctx: GoldenContext, load: DitLoadOptions = {}): Promise<{ model: Step1XEdit; ckpt: Checkpoint; cfg: Step1xConfig }> {
  const spec = ctx.spec ?? {};
  // `spec.weights` (the README error table runs copies of the cases with it): Linear weights converted on load
  if (spec.weights) load = { ...load, weights: { ...load.weights, weights: parseWeightsSpec(spec.weights) } };
  const path = join(ctx.caseDir, spec.dit_file ?? 'dit.safetensors');
  const ckpt = await Checkpoint.open(path);
  try {
    const shapeOf = (n: string) => (ckpt.has(n) ? ckpt.info(n).shape : undefined);
    const cfg = configFromCheckpoint(ckpt.keys(), shapeOf, { dit: spec.dit, connector: spec.connector }, path);
    checkKeys(ckpt, expectedDitKeys(cfg), { what: 'DiT checkpoint' });
    const model = await Step1XEdit.load(ctx.gpu, ckpt, cfg, load);
    return { model, ckpt, cfg };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}

export function shapeOfInput(ctx: GoldenContext, name: string): number[] {
  const info = ctx.io.tensors.get(name);
  if (!info) fail(`${ctx.caseDir}: io.safetensors has no tensor ${name}`);
  return [...info.shape];
}

/** A Tap that reads GPU tensors back and emits them under their golden names. */
export function emitTap(ctx: GoldenContext): Tap {
  return async (name, v, shape) => ctx.emit(name, v instanceof Float32Array ? v : await ctx.gpu.readF32(v), shape);
}

function parseWeightsSpec(v: unknown): WeightsOption {
  if (!(WEIGHTS_OPTIONS as readonly unknown[]).includes(v)) fail(`dit golden: spec.weights must be one of ${WEIGHTS_OPTIONS.join(', ')}, got ${JSON.stringify(v)}`);
  return v as WeightsOption;
}

export async function run(ctx: GoldenContext): Promise<void> {
  await runDit(ctx);
}

/** `load` lets tests force streaming under a small GPU budget. */
export async function runDit(ctx: GoldenContext, load: DitLoadOptions = {}): Promise<void> {
  const [B, L, Cimg] = shapeOfInput(ctx, 'in.img');
  const [B2, T, Cin] = shapeOfInput(ctx, 'in.llm_embedding');
  if (B2 !== B) fail(`dit golden: in.img ${fmtShape([B, L, Cimg])} and in.llm_embedding ${fmtShape([B2, T, Cin])} disagree on the batch`);
  const lj = ctx.caseJson?.lora;
  const lora = lj ? await LoraFile.open(join(ctx.caseDir, lj.file ?? 'lora.safetensors'), lj.multiplier ?? 1) : undefined;
  if (lora) load = { ...load, weights: { ...load.weights, loras: [...(load.weights?.loras ?? []), lora] } };
  let loaded;
  try {
    loaded = await loadCaseDit(ctx, load);
  } catch (e) {
    await lora?.close();
    throw e;
  }
  const { model, ckpt } = loaded;
  try {
    if (ctx.has('in.latent_noisy') && ctx.has('in.latent_ref')) {
      // the reference ids depend on the version the weights tell, never on a default
      const ls = shapeOfInput(ctx, 'in.latent_noisy');
      const p = prepare(await ctx.input('in.latent_noisy'), await ctx.input('in.latent_ref'), ls, B, T, model.version);
      ctx.emit('in.img', p.img, [B, L, Cimg]);
      ctx.emit('in.img_ids', p.imgIds, [B, L, 3]);
      ctx.emit('in.txt_ids', p.txtIds, [B, T, 3]);
    }
    if (lora) {
      const warn = checkLoras([lora], ckpt);
      if (warn) ctx.log(warn);
      // every weight the LoRA file touches, as the model holds it after the merge
      for (const key of ckpt.keys()) {
        if (!key.endsWith('.weight') || !lora.module(key.slice(0, -'.weight'.length))) continue;
        const w = await loadLinearWeight(ctx.gpu, withWeightPolicy(ckpt, load.weights && ditWeightPolicy(load.weights)), key); // as the model loaded it
        // packed weights (spec.weights) keep the LoRA unmerged: there is no merged matrix to show
        if (!w.packed) ctx.emit(`out.merged.${key}`, await ctx.gpu.readF32(w.data), [w.N, w.K]);
        w.dispose();
      }
    }
    ctx.log(`dit: B=${B} L=${L} T=${T}, ${model.cfg.depth}+${model.cfg.depth_single_blocks} blocks, ${model.streamedBlocks} streamed`);
    const pred = await model.forward(
      {
        img: await ctx.input('in.img'), imgIds: await ctx.input('in.img_ids'), txtIds: await ctx.input('in.txt_ids'),
        timesteps: await ctx.input('in.timesteps'), tVec: await ctx.input('in.t_vec'),
        llmEmbedding: await ctx.input('in.llm_embedding'), mask: await ctx.input('in.mask'), B, L, T,
      },
      emitTap(ctx),
    );
    ctx.emit('out.pred', await ctx.gpu.readF32(pred), [...pred.shape]);
    pred.dispose();
  } finally {
    model.dispose();
    await ckpt.close();
    await lora?.close();
  }
}

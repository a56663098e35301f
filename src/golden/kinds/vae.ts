/**
 * Golden kind `vae` (vae_tiny): FLUX AutoEncoder encode/decode from the case's `vae.safetensors`.
 * Inputs: `in.image` [B, 3, H, W] in [-1, 1] (or `in.image_u8` [H, W, 3] → to_tensor·2 − 1),
 * `in.sample_eps` (optional, sampled encode), `in.latent_random` (optional, a second decode);
 * `spec.ae` supplies scale/shift (the rest is inferred from the weights).
 * Emits `out.moments`, `out.mean`, `out.logvar`, `out.latent` (mean path), `out.latent_sampled`,
 * `out.decoded` = decode(out.latent), `out.decoded_random`, and every intermediate as `mid.enc.*` /
 * `mid.dec.*` (the decoder's from the decode of out.latent).
 */
import { join } from 'node:path';
import type { GoldenContext } from '../registry.js';
import type { Tensor } from '../../runtime/tensor.js';
import { AutoEncoder, type AeConfig } from '../../models/vae.js';
import { ExitCode, fail } from '../../errors.js';

async function inputImage(ctx: GoldenContext): Promise<{ data: Float32Array; shape: number[] }> {
  if (ctx.has('in.image')) return { data: await ctx.input('in.image'), shape: [...ctx.io.tensors.get('in.image')!.shape] };
  if (ctx.has('in.image_u8')) {
    const [H, W, C] = ctx.io.tensors.get('in.image_u8')!.shape;
    const u8 = await ctx.input('in.image_u8');
    const out = new Float32Array(C * H * W);
    // torchvision to_tensor (x / 255 in f32) then *2 - 1, HWC → CHW
    for (let c = 0; c < C; c++)
      for (let i = 0; i < H * W; i++) out[c * H * W + i] = Math.fround(Math.fround(u8[i * C + c] / 255) * 2) - 1;
    return { data: out, shape: [1, C, H, W] };
  }
  return fail(`golden vae: ${ctx.caseDir} has neither in.image nor in.image_u8`, ExitCode.USAGE);
}

export async function run(ctx: GoldenContext): Promise<void> {
  const g = ctx.gpu;
  const file = ctx.caseJson?.weights?.vae?.file ?? ctx.spec?.vae_file ?? 'vae.safetensors';
  const base: Partial<AeConfig> = { ...(ctx.spec?.ae ?? {}) };
  const ae = await AutoEncoder.load(g, join(ctx.caseDir, file), base);
  const cfg = ae.config;
  ctx.log(`  vae: ch ${cfg.ch}, ch_mult [${cfg.ch_mult}], ${cfg.num_res_blocks} res blocks, z ${cfg.z_channels}, scale ${cfg.scale_factor}, shift ${cfg.shift_factor}`);
  const emit = async (name: string, t: Tensor) => ctx.emit(name, await g.readF32(t), [...t.shape]);
  const tap = (name: string, t: Tensor) => emit(`mid.${name}`, t);
  try {
    const im = await inputImage(ctx);
    const img = g.upload(im.data, im.shape, 'f32', 'in.image');
    const enc = await ae.encode(img, { tap });
    img.dispose();
    await emit('out.moments', enc.moments);
    await emit('out.mean', enc.mean);
    await emit('out.logvar', enc.logvar);
    await emit('out.latent', enc.latent);
    if (ctx.has('in.sample_eps')) {
      const s = await ae.sampleLatent(enc.mean, enc.logvar, await ctx.input('in.sample_eps'));
      await emit('out.latent_sampled', s);
      s.dispose();
    }
    for (const t of [enc.moments, enc.mean, enc.logvar]) t.dispose();
    const dec = await ae.decode(enc.latent, tap);
    enc.latent.dispose();
    await emit('out.decoded', dec);
    dec.dispose();
    if (ctx.has('in.latent_random')) {
      const shape = [...ctx.io.tensors.get('in.latent_random')!.shape];
      const z = g.upload(await ctx.input('in.latent_random'), shape, 'f32', 'in.latent_random');
      const d2 = await ae.decode(z);
      z.dispose();
      await emit('out.decoded_random', d2);
      d2.dispose();
    }
  } finally {
    ae.dispose();
  }
}

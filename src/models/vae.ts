/**
 * The FLUX AutoEncoder (Step1X-Edit `modules/autoencoder.py`) on our kernels: encoder and decoder
 * (models/vae-blocks.ts, fields named like the checkpoint keys) and the latent scaling.
 * encode: latent = scale·(z − shift); decode(z) = decoder(z/scale + shift).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { Checkpoint } from '../io/checkpoint.js';
import { checkVaeCheckpoint, type AeConfig } from './vae-config.js';
import { openVaeWeights } from './diffusers-map.js';
import { Module } from '../nn/module.js';
import { chain } from '../nn/chain.js';
import { scale } from '../ops/elementwise.js';
import { fail, fmtShape } from '../errors.js';
import { Decoder, Encoder, type VaeTap } from './vae-blocks.js';

export { type AeConfig, REAL_AE, expectedVaeKeys, inferAeConfig, checkVaeCheckpoint } from './vae-config.js';
export { AttnBlock, Decoder, Encoder, ResnetBlock, type VaeTap } from './vae-blocks.js';

export interface EncodeResult {
  /** [B, 2z, h, w] raw encoder output: mean then logvar channels. */
  moments: Tensor;
  mean: Tensor;
  logvar: Tensor;
  /** scale·(z − shift) with z = mean, or mean + exp(logvar/2)·eps when `sample` was given. */
  latent: Tensor;
}

export class AutoEncoder extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  /** The declaration of `config` (keys `encoder.*`, `decoder.*`); load() reads it. */
  constructor(readonly config: AeConfig) {
    super();
    this.encoder = new Encoder(config);
    this.decoder = new Decoder(config);
  }

  /**
   * Load from a checkpoint (file path or open Checkpoint). The key set must match the inferred config
   * exactly (Step1xError WEIGHTS naming every missing / unexpected / mis-shaped key). Weights are read
   * one tensor at a time. `base` supplies scale/shift (and fallbacks for what cannot be inferred).
   */
  static async load(g: Gpu, src: string | Checkpoint, base: Partial<AeConfig> = {}): Promise<AutoEncoder> {
    // a path may be a diffusers vae/ directory: opened under the official names, its config.json gives scale/shift
    const opened = typeof src === 'string' ? await openVaeWeights(src) : undefined;
    const ckpt = opened?.ckpt ?? (src as Checkpoint);
    base = { ...base, ...(opened?.base ?? {}) };
    try {
      return await new AutoEncoder(checkVaeCheckpoint(ckpt, base)).load(g, ckpt);
    } finally {
      if (typeof src === 'string') await ckpt.close();
    }
  }

  /** Posterior moments of img [B, in_channels, H, W] in [-1, 1]. */
  async moments(img: Tensor, tap?: VaeTap): Promise<Tensor> {
    const c = this.config.in_channels;
    if (img.rank !== 4 || img.shape[1] !== c) fail(`vae.encode: image ${fmtShape(img.shape)} must be [B, ${c}, H, W]`);
    return this.encoder.forward(img, tap);
  }

  /**
   * encode: moments → mean/logvar → latent = scale·(z − shift). Without `sample` z is the posterior mean
   * (deterministic, our default); with `sample` (ε, [B, z, h, w]) z = mean + exp(logvar/2)·ε as the
   * official sampled encode.
   */
  async encode(img: Tensor, opts: { sample?: Float32Array; tap?: VaeTap } = {}): Promise<EncodeResult> {
    const g = img.gpu;
    return g.scopeAsync(async () => {
      const moments = await this.moments(img, opts.tap);
      const [B, C2, h, w] = moments.shape;
      const z = C2 / 2, plane = z * h * w;
      const mean = g.empty([B, z, h, w], 'f32', 'vae.mean');
      const logvar = g.empty([B, z, h, w], 'f32', 'vae.logvar');
      // moments rows per image: [mean channels | logvar channels]
      const rows = moments.reshape([B * 2, plane]);
      for (let b = 0; b < B; b++) {
        g.copyInto(rows.rows(2 * b, 1), mean, b * plane * 4);
        g.copyInto(rows.rows(2 * b + 1, 1), logvar, b * plane * 4);
      }
      const latent = opts.sample ? await this.sampleLatent(mean, logvar, opts.sample) : this.scaleLatent(mean);
      return { moments, mean, logvar, latent };
    });
  }

  /** scale·(z − shift), as two exact-order f32 steps like the reference. */
  scaleLatent(z: Tensor): Tensor {
    return chain(z.gpu, () => scale(z, 1, -this.config.shift_factor), (t) => scale(t, this.config.scale_factor, 0));
  }

  /**
   * scale·(mean + exp(0.5·logvar)·ε − shift). Computed on the host in f32: the latent is small
   * (16 × H/8 × W/8) and the op set has no exp kernel.
   */
  async sampleLatent(mean: Tensor, logvar: Tensor, eps: Float32Array): Promise<Tensor> {
    if (eps.length !== mean.numel) fail(`vae.encode: sample noise has ${eps.length} values, the latent ${fmtShape(mean.shape)} needs ${mean.numel}`);
    const g = mean.gpu;
    const m = await g.readF32(mean), lv = await g.readF32(logvar);
    const f = Math.fround, { scale_factor: s, shift_factor: sh } = this.config;
    const out = new Float32Array(m.length);
    for (let i = 0; i < m.length; i++) {
      const zi = f(m[i] + f(f(Math.exp(f(0.5 * lv[i]))) * eps[i]));
      out[i] = f(f(s) * f(zi - f(sh)));
    }
    return g.upload(out, [...mean.shape], 'f32', 'vae.latent');
  }

  /** decode(z) = decoder(z / scale + shift): [B, z, h, w] → [B, out_ch, 8h, 8w] (not clamped). */
  async decode(z: Tensor, tap?: VaeTap): Promise<Tensor> {
    const zc = this.config.z_channels;
    if (z.rank !== 4 || z.shape[1] !== zc) fail(`vae.decode: latent ${fmtShape(z.shape)} must be [B, ${zc}, h, w]`);
    return z.gpu.scopeAsync(async () => {
      const zu = scale(z, 1 / this.config.scale_factor, this.config.shift_factor);
      if (tap) await tap('dec.z_unscaled', zu);
      return this.decoder.forward(zu, tap);
    });
  }
}

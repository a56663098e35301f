/**
 * The FLUX AutoEncoder (Step1X-Edit `modules/autoencoder.py`), on our kernels. Field names follow the
 * checkpoint keys (`encoder.down.0.block.1.norm1.weight` is `encoder.down[0].block[1].norm1.weight`).
 *
 *   Encoder: conv_in → per level i: num_res_blocks ResnetBlocks (ch·in_ch_mult[i] → ch·ch_mult[i]),
 *            Downsample (pad (0,1,0,1), 3x3 stride 2) except the last level → mid (block_1, attn_1,
 *            block_2) → GroupNorm → swish → conv_out (→ 2·z_channels moments: mean, logvar)
 *   Decoder: conv_in (z → ch·ch_mult[-1]) → mid → levels L-1..0: num_res_blocks+1 ResnetBlocks,
 *            Upsample (nearest 2x + 3x3 conv) except level 0 → GroupNorm → swish → conv_out
 * GroupNorm has 32 groups, eps 1e-6; the mid attention is single-head over all H·W positions with
 * head dim = channels. encode: latent = scale·(z − shift); decode(z) = decoder(z/scale + shift).
 * Forward code frees by scope (nn/chain.ts): each intermediate goes as soon as the next one exists, so
 * peak memory is a few activations, as if freed by hand.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { Checkpoint } from '../io/checkpoint.js';
import { checkVaeCheckpoint, type AeConfig } from './vae-config.js';
import { openVaeWeights } from './diffusers-map.js';
import { loadWeight } from '../nn/weights.js';
import { chain, chainAsync } from '../nn/chain.js';
import { conv2d, groupNorm, type Conv2dOpts } from '../ops/conv.js';
import { attention } from '../ops/attention.js';
import { scale } from '../ops/elementwise.js';
import { fail, fmtShape } from '../errors.js';

export { type AeConfig, REAL_AE, expectedVaeKeys, inferAeConfig, checkVaeCheckpoint } from './vae-config.js';

const GROUPS = 32;
const EPS = 1e-6;
const PAD1: [number, number, number, number] = [1, 1, 1, 1];

/** Called with (name, tensor) at each intermediate (`enc.down1.blocks`, `dec.mid.attn_1`, ...); must not dispose it. */
export type VaeTap = (name: string, t: Tensor) => Promise<void> | void;

// ---- blocks ---------------------------------------------------------------------------------------

type Loader = (name: string) => Promise<Tensor>;

class Conv {
  constructor(readonly weight: Tensor, readonly bias: Tensor) {}
  static async load(ld: Loader, p: string): Promise<Conv> {
    return new Conv(await ld(`${p}.weight`), await ld(`${p}.bias`));
  }
  forward(x: Tensor, opts: Conv2dOpts = {}): Tensor {
    return conv2d(x, this.weight, this.bias, opts);
  }
  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}

class Norm {
  constructor(readonly weight: Tensor, readonly bias: Tensor) {}
  static async load(ld: Loader, p: string): Promise<Norm> {
    return new Norm(await ld(`${p}.weight`), await ld(`${p}.bias`));
  }
  forward(x: Tensor, silu: boolean): Tensor {
    return groupNorm(x, GROUPS, this.weight, this.bias, EPS, { silu });
  }
  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}

export class ResnetBlock {
  constructor(readonly norm1: Norm, readonly conv1: Conv, readonly norm2: Norm, readonly conv2: Conv, readonly nin_shortcut?: Conv) {}
  static async load(ld: Loader, p: string, cin: number, cout: number): Promise<ResnetBlock> {
    return new ResnetBlock(await Norm.load(ld, `${p}.norm1`), await Conv.load(ld, `${p}.conv1`), await Norm.load(ld, `${p}.norm2`),
      await Conv.load(ld, `${p}.conv2`), cin !== cout ? await Conv.load(ld, `${p}.nin_shortcut`) : undefined);
  }
  /** x + conv2(swish(norm2(conv1(swish(norm1(x)))))), the shortcut through nin_shortcut when channels change. */
  forward(x: Tensor): Tensor {
    return chain(x.gpu,
      () => this.norm1.forward(x, true),
      (h) => this.conv1.forward(h, { pad: PAD1 }),
      (h) => this.norm2.forward(h, true),
      (h) => this.conv2.forward(h, { pad: PAD1, residual: this.nin_shortcut?.forward(x) ?? x }));
  }
  dispose(): void {
    for (const m of [this.norm1, this.conv1, this.norm2, this.conv2, this.nin_shortcut]) m?.dispose();
  }
}

export class AttnBlock {
  constructor(readonly norm: Norm, readonly q: Conv, readonly k: Conv, readonly v: Conv, readonly proj_out: Conv) {}
  static async load(ld: Loader, p: string): Promise<AttnBlock> {
    return new AttnBlock(await Norm.load(ld, `${p}.norm`), await Conv.load(ld, `${p}.q`), await Conv.load(ld, `${p}.k`),
      await Conv.load(ld, `${p}.v`), await Conv.load(ld, `${p}.proj_out`));
  }
  /** x + proj_out(sdpa(q, k, v)) with one head of Dh = C over the H·W positions ([B, HW, 1, C] tokens). */
  forward(x: Tensor): Tensor {
    const [B, C, H, W] = x.shape;
    // the 1x1 q/k/v convs write token-major [B, HW, C] directly (= [B, HW, 1, C], one head)
    const tokens = (c: Conv, h: Tensor) => c.forward(h, { outTokens: true }).reshape([B, H * W, 1, C]);
    return chain(x.gpu,
      () => this.norm.forward(x, false),
      (h) => [tokens(this.q, h), tokens(this.k, h), tokens(this.v, h)],
      ([q, k, v]) => attention(q, k, v).reshape([B, H * W, C]),
      (a) => this.proj_out.forward(a, { inTokens: [H, W], residual: x }));
  }
  dispose(): void {
    for (const m of [this.norm, this.q, this.k, this.v, this.proj_out]) m.dispose();
  }
}

interface Level {
  block: ResnetBlock[];
  downsample?: { conv: Conv };
  upsample?: { conv: Conv };
}

interface Mid {
  block_1: ResnetBlock;
  attn_1: AttnBlock;
  block_2: ResnetBlock;
}

async function loadMid(ld: Loader, p: string, c: number): Promise<Mid> {
  return { block_1: await ResnetBlock.load(ld, `${p}.block_1`, c, c), attn_1: await AttnBlock.load(ld, `${p}.attn_1`), block_2: await ResnetBlock.load(ld, `${p}.block_2`, c, c) };
}

/** One step of an encoder/decoder chain and the tap names its result is shown under. */
type Step = { f: (h: Tensor) => Tensor; taps: string[] };
const step = (f: (h: Tensor) => Tensor, ...taps: string[]): Step => ({ f, taps });

function midSteps(mid: Mid, pre: string): Step[] {
  return [step((h) => mid.block_1.forward(h), `${pre}.mid.block_1`), step((h) => mid.attn_1.forward(h), `${pre}.mid.attn_1`),
    step((h) => mid.block_2.forward(h), `${pre}.mid.block_2`)];
}

/** The steps on x (left to its owner), each value freed once the next exists (nn/chain.ts), tapped as named. */
function runSteps(x: Tensor, [first, ...rest]: Step[], tap: VaeTap | undefined): Promise<Tensor> {
  const tapped = (s: Step) => async (h: Tensor) => {
    const y = s.f(h);
    if (tap) for (const name of s.taps) await tap(name, y);
    return y;
  };
  return chainAsync(x.gpu, () => tapped(first)(x), rest.map(tapped));
}

export class Encoder {
  constructor(readonly conv_in: Conv, readonly down: Level[], readonly mid: Mid, readonly norm_out: Norm, readonly conv_out: Conv) {}
  static async load(ld: Loader, cfg: AeConfig): Promise<Encoder> {
    const { ch, ch_mult: mult, num_res_blocks: nrb } = cfg;
    const conv_in = await Conv.load(ld, 'encoder.conv_in');
    const down: Level[] = [];
    let cin = ch;
    for (let i = 0; i < mult.length; i++) {
      cin = ch * (i === 0 ? 1 : mult[i - 1]);
      const block: ResnetBlock[] = [];
      for (let j = 0; j < nrb; j++) {
        block.push(await ResnetBlock.load(ld, `encoder.down.${i}.block.${j}`, cin, ch * mult[i]));
        cin = ch * mult[i];
      }
      down.push({ block, downsample: i !== mult.length - 1 ? { conv: await Conv.load(ld, `encoder.down.${i}.downsample.conv`) } : undefined });
    }
    return new Encoder(conv_in, down, await loadMid(ld, 'encoder.mid', cin), await Norm.load(ld, 'encoder.norm_out'), await Conv.load(ld, 'encoder.conv_out'));
  }
  /** img [B, in_channels, H, W] → moments [B, 2z, H/2^(L-1), W/2^(L-1)]. */
  forward(img: Tensor, tap?: VaeTap): Promise<Tensor> {
    const steps = [step((h) => this.conv_in.forward(h, { pad: PAD1 }), 'enc.conv_in')];
    this.down.forEach((lv, i) => {
      lv.block.forEach((b, j) => steps.push(step((h) => b.forward(h), ...(j === lv.block.length - 1 ? [`enc.down${i}.blocks`] : []))));
      const ds = lv.downsample?.conv;
      if (ds) steps.push(step((h) => ds.forward(h, { stride: 2, pad: [0, 1, 0, 1] }), `enc.down${i}.downsample`));
    });
    steps.push(...midSteps(this.mid, 'enc'), step((h) => this.norm_out.forward(h, true), 'enc.pre_conv_out'),
      step((h) => this.conv_out.forward(h, { pad: PAD1 })));
    return runSteps(img, steps, tap);
  }
  dispose(): void {
    disposeAll([this.conv_in, this.norm_out, this.conv_out], this.down, this.mid);
  }
}

export class Decoder {
  constructor(readonly conv_in: Conv, readonly mid: Mid, readonly up: Level[], readonly norm_out: Norm, readonly conv_out: Conv) {}
  static async load(ld: Loader, cfg: AeConfig): Promise<Decoder> {
    const { ch, ch_mult: mult, num_res_blocks: nrb } = cfg;
    const L = mult.length;
    let cin = ch * mult[L - 1];
    const conv_in = await Conv.load(ld, 'decoder.conv_in');
    const mid = await loadMid(ld, 'decoder.mid', cin);
    const up: Level[] = new Array(L);
    for (let i = L - 1; i >= 0; i--) {
      const block: ResnetBlock[] = [];
      for (let j = 0; j < nrb + 1; j++) {
        block.push(await ResnetBlock.load(ld, `decoder.up.${i}.block.${j}`, cin, ch * mult[i]));
        cin = ch * mult[i];
      }
      up[i] = { block, upsample: i !== 0 ? { conv: await Conv.load(ld, `decoder.up.${i}.upsample.conv`) } : undefined };
    }
    return new Decoder(conv_in, mid, up, await Norm.load(ld, 'decoder.norm_out'), await Conv.load(ld, 'decoder.conv_out'));
  }
  /** z [B, z_channels, h, w] (already unscaled) → image [B, out_ch, h·2^(L-1), w·2^(L-1)]. */
  forward(z: Tensor, tap?: VaeTap): Promise<Tensor> {
    const steps = [step((h) => this.conv_in.forward(h, { pad: PAD1 }), 'dec.conv_in'), ...midSteps(this.mid, 'dec')];
    for (let i = this.up.length - 1; i >= 0; i--) {
      const lv = this.up[i];
      lv.block.forEach((b, j) => steps.push(step((h) => b.forward(h), ...(j === lv.block.length - 1 ? [`dec.up${i}.blocks`] : []))));
      // Upsample = nearest 2x then 3x3 conv, fused (the 2x tensor is never materialised)
      const us = lv.upsample?.conv;
      if (us) steps.push(step((h) => us.forward(h, { pad: PAD1, upsample2x: true }), `dec.up${i}.upsample`));
    }
    steps[steps.length - 1].taps.push('dec.pre_norm_out');
    steps.push(step((h) => this.norm_out.forward(h, true)), step((h) => this.conv_out.forward(h, { pad: PAD1 })));
    return runSteps(z, steps, tap);
  }
  dispose(): void {
    disposeAll([this.conv_in, this.norm_out, this.conv_out], this.up, this.mid);
  }
}

function disposeAll(mods: { dispose(): void }[], levels: Level[], mid: Mid): void {
  for (const m of mods) m.dispose();
  for (const lv of levels) {
    lv.block.forEach((b) => b.dispose());
    lv.downsample?.conv.dispose();
    lv.upsample?.conv.dispose();
  }
  mid.block_1.dispose();
  mid.attn_1.dispose();
  mid.block_2.dispose();
}

export interface EncodeResult {
  /** [B, 2z, h, w] raw encoder output: mean then logvar channels. */
  moments: Tensor;
  mean: Tensor;
  logvar: Tensor;
  /** scale·(z − shift) with z = mean, or mean + exp(logvar/2)·eps when `sample` was given. */
  latent: Tensor;
}

export class AutoEncoder {
  constructor(readonly config: AeConfig, readonly encoder: Encoder, readonly decoder: Decoder) {}

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
      const cfg = checkVaeCheckpoint(ckpt, base);
      // conv weights keep bf16 packed if stored so; everything else (and f16) is widened to f32
      const ld: Loader = (name) => {
        const info = ckpt.info(name);
        return loadWeight(g, ckpt, name, { as: info.dtype === 'BF16' && info.shape.length === 4 ? 'native' : 'f32' });
      };
      const encoder = await Encoder.load(ld, cfg);
      const decoder = await Decoder.load(ld, cfg);
      return new AutoEncoder(cfg, encoder, decoder);
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

  dispose(): void {
    this.encoder.dispose();
    this.decoder.dispose();
  }
}

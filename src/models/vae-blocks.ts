/**
 * The FLUX AutoEncoder's parts (Step1X-Edit `modules/autoencoder.py`) as modules: fields are named like
 * the checkpoint keys (`encoder.down.0.block.1.norm1.weight` is `encoder.down[0].block[1].norm1.weight`),
 * so the key set, loading, disposal and byte counts all come from these declarations (nn/module.ts); the
 * diffusers layout (AutoencoderKL) is read through a name view onto them (models/diffusers-map.ts).
 *
 *   Encoder: conv_in → per level i: num_res_blocks ResnetBlocks (ch·in_ch_mult[i] → ch·ch_mult[i]),
 *            Downsample (pad (0,1,0,1), 3x3 stride 2) except the last level → mid (block_1, attn_1,
 *            block_2) → GroupNorm → swish → conv_out (→ 2·z_channels moments: mean, logvar)
 *   Decoder: conv_in (z → ch·ch_mult[-1]) → mid → levels L-1..0: num_res_blocks+1 ResnetBlocks,
 *            Upsample (nearest 2x + 3x3 conv) except level 0 → GroupNorm → swish → conv_out
 * GroupNorm has 32 groups, eps 1e-6; the mid attention is single-head over all H·W positions with
 * head dim = channels. Forward code frees by scope (nn/chain.ts): each intermediate goes as soon as the
 * next one exists, so peak memory is a few activations, as if freed by hand.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import type { AeConfig } from './vae-config.js';
import { Module, TensorParam } from '../nn/module.js';
import { loadWeight } from '../nn/weights.js';
import { chain, scan } from '../nn/chain.js';
import { conv2d, groupNorm, type Conv2dOpts } from '../ops/conv.js';
import { attention } from '../ops/attention.js';

const GROUPS = 32;
const EPS = 1e-6;
const PAD1: [number, number, number, number] = [1, 1, 1, 1];

/** Called with (name, tensor) at each intermediate (`enc.down1.blocks`, `dec.mid.attn_1`, ...); must not dispose it. */
export type VaeTap = (name: string, t: Tensor) => Promise<void> | void;

/** A conv kernel: kept bf16 packed when stored so (the conv kernels read it), any other dtype widened to f32. */
class ConvWeight extends TensorParam {
  protected override read(g: Gpu, ckpt: Checkpoint, name: string): Promise<Tensor> {
    return loadWeight(g, ckpt, name, { shape: this.shape, as: ckpt.info(name).dtype === 'BF16' ? 'native' : 'f32' });
  }
}
const f32 = (c: number) => new TensorParam([c], 'f32');

class Conv extends Module {
  readonly weight: ConvWeight;
  readonly bias: TensorParam;
  constructor(cout: number, cin: number, k: number) {
    super();
    this.weight = new ConvWeight([cout, cin, k, k]);
    this.bias = f32(cout);
  }
  forward(x: Tensor, opts: Conv2dOpts = {}): Tensor {
    return conv2d(x, this.weight.value, this.bias.value, opts);
  }
}

class Norm extends Module {
  readonly weight: TensorParam;
  readonly bias: TensorParam;
  constructor(c: number) {
    super();
    this.weight = f32(c);
    this.bias = f32(c);
  }
  forward(x: Tensor, silu: boolean): Tensor {
    return groupNorm(x, GROUPS, this.weight.value, this.bias.value, EPS, { silu });
  }
}

export class ResnetBlock extends Module {
  readonly norm1: Norm;
  readonly conv1: Conv;
  readonly norm2: Norm;
  readonly conv2: Conv;
  readonly nin_shortcut?: Conv;
  constructor(cin: number, cout: number) {
    super();
    this.norm1 = new Norm(cin);
    this.conv1 = new Conv(cout, cin, 3);
    this.norm2 = new Norm(cout);
    this.conv2 = new Conv(cout, cout, 3);
    if (cin !== cout) this.nin_shortcut = new Conv(cout, cin, 1);
  }
  /** x + conv2(swish(norm2(conv1(swish(norm1(x)))))), the shortcut through nin_shortcut when channels change. */
  forward(x: Tensor): Tensor {
    return chain(x.gpu,
      () => this.norm1.forward(x, true),
      (h) => this.conv1.forward(h, { pad: PAD1 }),
      (h) => this.norm2.forward(h, true),
      (h) => this.conv2.forward(h, { pad: PAD1, residual: this.nin_shortcut?.forward(x) ?? x }));
  }
}

export class AttnBlock extends Module {
  readonly norm: Norm;
  readonly q: Conv;
  readonly k: Conv;
  readonly v: Conv;
  readonly proj_out: Conv;
  constructor(c: number) {
    super();
    this.norm = new Norm(c);
    [this.q, this.k, this.v, this.proj_out] = [0, 1, 2, 3].map(() => new Conv(c, c, 1));
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
}

/** `downsample` / `upsample`: a module holding `conv`. */
class Resample extends Module {
  readonly conv: Conv;
  constructor(c: number) {
    super();
    this.conv = new Conv(c, c, 3);
  }
}

/** One resolution level: `block.j` and its down- or upsampler. */
class Level extends Module {
  readonly block: ResnetBlock[] = [];
  downsample?: Resample;
  upsample?: Resample;
}

class Mid extends Module {
  readonly block_1: ResnetBlock;
  readonly attn_1: AttnBlock;
  readonly block_2: ResnetBlock;
  constructor(c: number) {
    super();
    this.block_1 = new ResnetBlock(c, c);
    this.attn_1 = new AttnBlock(c);
    this.block_2 = new ResnetBlock(c, c);
  }
  steps(pre: string): Step[] {
    return [step((h) => this.block_1.forward(h), `${pre}.mid.block_1`), step((h) => this.attn_1.forward(h), `${pre}.mid.attn_1`),
      step((h) => this.block_2.forward(h), `${pre}.mid.block_2`)];
  }
}

/** One step of an encoder/decoder chain and the tap names its result is shown under. */
type Step = { f: (h: Tensor) => Tensor; taps: string[] };
const step = (f: (h: Tensor) => Tensor, ...taps: string[]): Step => ({ f, taps });

/** The steps on x (left to its owner), each value freed once the next exists (nn/chain.ts), tapped as named. */
function runSteps(x: Tensor, [first, ...rest]: Step[], tap: VaeTap | undefined): Promise<Tensor> {
  const tapped = (s: Step) => async (h: Tensor) => {
    const y = s.f(h);
    if (tap) for (const name of s.taps) await tap(name, y);
    return y;
  };
  return scan(x.gpu, () => tapped(first)(x), rest.map(tapped));
}

export class Encoder extends Module {
  readonly conv_in: Conv;
  readonly down: Level[] = [];
  readonly mid: Mid;
  readonly norm_out: Norm;
  readonly conv_out: Conv;
  constructor({ ch, ch_mult: mult, num_res_blocks: nrb, in_channels, z_channels }: AeConfig) {
    super();
    this.conv_in = new Conv(ch, in_channels, 3);
    let cin = ch;
    mult.forEach((m, i) => {
      const lv = new Level();
      cin = ch * (i === 0 ? 1 : mult[i - 1]);
      for (let j = 0; j < nrb; j++, cin = ch * m) lv.block.push(new ResnetBlock(cin, ch * m));
      if (i !== mult.length - 1) lv.downsample = new Resample(cin);
      this.down.push(lv);
    });
    this.mid = new Mid(cin);
    this.norm_out = new Norm(cin);
    this.conv_out = new Conv(2 * z_channels, cin, 3);
  }
  /** img [B, in_channels, H, W] → moments [B, 2z, H/2^(L-1), W/2^(L-1)]. */
  forward(img: Tensor, tap?: VaeTap): Promise<Tensor> {
    const steps = [step((h) => this.conv_in.forward(h, { pad: PAD1 }), 'enc.conv_in')];
    this.down.forEach((lv, i) => {
      lv.block.forEach((b, j) => steps.push(step((h) => b.forward(h), ...(j === lv.block.length - 1 ? [`enc.down${i}.blocks`] : []))));
      const ds = lv.downsample?.conv;
      if (ds) steps.push(step((h) => ds.forward(h, { stride: 2, pad: [0, 1, 0, 1] }), `enc.down${i}.downsample`));
    });
    steps.push(...this.mid.steps('enc'), step((h) => this.norm_out.forward(h, true), 'enc.pre_conv_out'),
      step((h) => this.conv_out.forward(h, { pad: PAD1 })));
    return runSteps(img, steps, tap);
  }
}

export class Decoder extends Module {
  readonly conv_in: Conv;
  readonly mid: Mid;
  /** Indexed by resolution level (0 = full size), run from the last. */
  readonly up: Level[];
  readonly norm_out: Norm;
  readonly conv_out: Conv;
  constructor({ ch, ch_mult: mult, num_res_blocks: nrb, out_ch, z_channels }: AeConfig) {
    super();
    const L = mult.length;
    let cin = ch * mult[L - 1];
    this.conv_in = new Conv(cin, z_channels, 3);
    this.mid = new Mid(cin);
    this.up = mult.map(() => new Level());
    for (let i = L - 1; i >= 0; i--) {
      const lv = this.up[i];
      for (let j = 0; j < nrb + 1; j++, cin = ch * mult[i]) lv.block.push(new ResnetBlock(cin, ch * mult[i]));
      if (i !== 0) lv.upsample = new Resample(cin);
    }
    this.norm_out = new Norm(cin);
    this.conv_out = new Conv(out_ch, cin, 3);
  }
  /** z [B, z_channels, h, w] (already unscaled) → image [B, out_ch, h·2^(L-1), w·2^(L-1)]. */
  forward(z: Tensor, tap?: VaeTap): Promise<Tensor> {
    const steps = [step((h) => this.conv_in.forward(h, { pad: PAD1 }), 'dec.conv_in'), ...this.mid.steps('dec')];
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
}

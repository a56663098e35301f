/**
 * Linear layer holding checkpoint weights: `w` [N, K] (a Weight: f32 / f16 / bf16, or packed fp8 / q8 / q4
 * with LoRA adapters, see nn/weight.ts), optional `bias` [N].
 * `Linear.load(g, ckpt, 'double_blocks.0.img_attn.qkv')` reads `<prefix>.weight` under the checkpoint's
 * WeightPolicy and `<prefix>.bias` (when present). forward(x [..., K]) = x · Wᵀ + b; `rows(start, n)` is
 * the Linear of output rows [start, start + n) (fused qkv / linear1), sharing the GPU memory.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import type { Activation } from '../ops/linear.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { loadWeight } from './weights.js';
import { Weight, loadLinearWeight } from './weight.js';

export interface LinearLoadOptions {
  as?: 'native' | 'f32';
  /** Expected [outFeatures, inFeatures]; checked against the checkpoint shape. */
  shape?: [number, number];
  /** true: the bias must exist; false: ignore it even if present; undefined: load it when present. */
  bias?: boolean;
}

export class Linear {
  readonly w: Weight;
  constructor(
    weight: Tensor | Weight,
    public bias?: Tensor,
    readonly name = '',
  ) {
    if (!(weight instanceof Weight) && weight.rank !== 2) throw new Step1xError(`Linear ${name}: weight must be [N, K], got ${fmtShape(weight.shape)}`, ExitCode.WEIGHTS);
    this.w = weight instanceof Weight ? weight : Weight.plain(weight);
    if (bias && (bias.rank !== 1 || bias.shape[0] !== this.w.N))
      throw new Step1xError(`Linear ${name}: bias ${fmtShape(bias.shape)} does not match weight ${fmtShape(this.w.shape)}`, ExitCode.WEIGHTS);
  }

  /** The plain weight tensor (f32 / f16 / bf16); packed weights have none. */
  get weight(): Tensor {
    if (this.w.packed) throw new Step1xError(`Linear ${this.name}: weight is ${this.w.format}, not a plain tensor`, ExitCode.WEIGHTS);
    return this.w.data;
  }
  get outFeatures(): number {
    return this.w.N;
  }
  get inFeatures(): number {
    return this.w.K;
  }

  /** Output rows [start, start + count) as a Linear over views (dispose it after use). */
  rows(start: number, count: number): Linear {
    return new Linear(this.w.rows(start, count), this.bias?.rows(start, count), this.name);
  }

  static async load(g: Gpu, ckpt: Checkpoint, prefix: string, opts: LinearLoadOptions = {}): Promise<Linear> {
    const weight = await loadLinearWeight(g, ckpt, `${prefix}.weight`, { as: opts.as, shape: opts.shape, modulePath: prefix });
    const bname = `${prefix}.bias`;
    if (opts.bias === true && !ckpt.has(bname)) {
      weight.dispose();
      throw new Step1xError(`${ckpt.path}: checkpoint has no tensor "${bname}"`, ExitCode.WEIGHTS);
    }
    let bias: Tensor | undefined;
    try {
      if (opts.bias !== false && ckpt.has(bname)) bias = await loadWeight(g, ckpt, bname, { as: opts.as, shape: [weight.N] });
      return new Linear(weight, bias, prefix);
    } catch (e) {
      weight.dispose();
      bias?.dispose();
      throw e;
    }
  }

  forward(x: Tensor, act?: Activation): Tensor {
    return this.w.forward(x, this.bias, act);
  }

  dispose(): void {
    this.w.dispose();
    this.bias?.dispose();
  }
}

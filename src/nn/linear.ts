/**
 * Linear layer holding checkpoint weights: `weight` [N, K] (f32 / f16 / packed bf16), optional `bias` [N].
 * `Linear.load(g, ckpt, 'double_blocks.0.img_attn.qkv')` reads `<prefix>.weight` and `<prefix>.bias`
 * (when present). forward(x [..., K]) = x · Wᵀ + b through ops/linear (which splits big weights).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { linear, type Activation } from '../ops/linear.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { loadWeight } from './weights.js';

export interface LinearLoadOptions {
  as?: 'native' | 'f32';
  /** Expected [outFeatures, inFeatures]; checked against the checkpoint shape. */
  shape?: [number, number];
  /** true: the bias must exist; false: ignore it even if present; undefined: load it when present. */
  bias?: boolean;
}

export class Linear {
  constructor(
    public weight: Tensor,
    public bias?: Tensor,
    readonly name = '',
  ) {
    if (weight.rank !== 2) throw new Step1xError(`Linear ${name}: weight must be [N, K], got ${fmtShape(weight.shape)}`, ExitCode.WEIGHTS);
    if (bias && (bias.rank !== 1 || bias.shape[0] !== weight.shape[0]))
      throw new Step1xError(`Linear ${name}: bias ${fmtShape(bias.shape)} does not match weight ${fmtShape(weight.shape)}`, ExitCode.WEIGHTS);
  }

  get outFeatures(): number {
    return this.weight.shape[0];
  }
  get inFeatures(): number {
    return this.weight.shape[1];
  }

  static async load(g: Gpu, ckpt: Checkpoint, prefix: string, opts: LinearLoadOptions = {}): Promise<Linear> {
    const weight = await loadWeight(g, ckpt, `${prefix}.weight`, { as: opts.as, shape: opts.shape });
    const bname = `${prefix}.bias`;
    if (opts.bias === true && !ckpt.has(bname)) {
      weight.dispose();
      throw new Step1xError(`${ckpt.path}: checkpoint has no tensor "${bname}"`, ExitCode.WEIGHTS);
    }
    let bias: Tensor | undefined;
    try {
      if (opts.bias !== false && ckpt.has(bname)) bias = await loadWeight(g, ckpt, bname, { as: opts.as, shape: [weight.shape[0]] });
      return new Linear(weight, bias, prefix);
    } catch (e) {
      weight.dispose();
      bias?.dispose();
      throw e;
    }
  }

  forward(x: Tensor, act?: Activation): Tensor {
    return linear(x, this.weight, this.bias, act ? { act } : undefined);
  }

  dispose(): void {
    this.weight.dispose();
    this.bias?.dispose();
  }
}

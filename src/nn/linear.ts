/**
 * Linear layer holding checkpoint weights: `weight` [N, K] (a Weight: f32 / f16 / bf16, or packed fp8 / q8 /
 * q4 with LoRA adapters, see nn/weight.ts), optional `bias` [N]. forward(x [..., K]) = x · Wᵀ + b;
 * `rows(start, n)` is the Linear of output rows [start, start + n) (fused qkv / linear1), sharing the GPU memory.
 *
 *   new Linear(N, K, { bias })       declared (a field of a Module; loaded by Module.load under its prefix)
 *   new Linear(weight, bias?, name)  built from tensors already on the GPU
 *   Linear.load(g, ckpt, 'double_blocks.0.img_attn.qkv')  standalone, shapes from the checkpoint
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import type { Activation } from '../ops/linear.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { Weight, type LinearInto } from './weight.js';
import { Module, TensorParam, WeightParam } from './module.js';

export interface LinearLoadOptions {
  as?: 'native' | 'f32';
  /** Expected [outFeatures, inFeatures]; checked against the checkpoint shape. */
  shape?: [number, number];
  /** true: the bias must exist; false: ignore it even if present; undefined: load it when present. */
  bias?: boolean;
}

export class Linear extends Module {
  private readonly wp: WeightParam;
  private readonly bp: TensorParam | undefined;
  private readonly given: string | undefined;

  constructor(outFeatures: number, inFeatures: number, opts?: { bias?: boolean; as?: 'native' | 'f32' });
  constructor(weight: Tensor | Weight, bias?: Tensor, name?: string);
  constructor(a: number | Tensor | Weight, b?: number | Tensor, c?: string | { bias?: boolean; as?: 'native' | 'f32' }) {
    super();
    if (typeof a === 'number') {
      const o = (c ?? {}) as { bias?: boolean; as?: 'native' | 'f32' };
      this.wp = new WeightParam([a, b as number], o.as);
      this.bp = o.bias === false ? undefined : new TensorParam([a], o.as);
      return;
    }
    const name = (c as string | undefined) ?? '';
    const bias = b as Tensor | undefined;
    if (!(a instanceof Weight) && a.rank !== 2) throw new Step1xError(`Linear ${name}: weight must be [N, K], got ${fmtShape(a.shape)}`, ExitCode.WEIGHTS);
    const w = a instanceof Weight ? a : Weight.plain(a);
    if (bias && (bias.rank !== 1 || bias.shape[0] !== w.N))
      throw new Step1xError(`Linear ${name}: bias ${fmtShape(bias.shape)} does not match weight ${fmtShape(w.shape)}`, ExitCode.WEIGHTS);
    this.given = name;
    this.wp = new WeightParam(w.shape).set(w);
    this.bp = bias ? new TensorParam(bias.shape).set(bias) : undefined;
  }

  /** The checkpoint keys are `weight` and `bias`, not the field names. */
  protected override entries(): [string, TensorParam | WeightParam][] {
    return this.bp ? [['weight', this.wp], ['bias', this.bp]] : [['weight', this.wp]];
  }

  /** For messages: the name it was built with, else its checkpoint key once loaded (`single_blocks.3.linear1`). */
  get name(): string {
    return this.given ?? this.wp.modulePath;
  }
  get w(): Weight {
    return this.wp.value;
  }
  get bias(): Tensor | undefined {
    return this.bp?.value;
  }
  /** The plain weight tensor (f32 / f16 / bf16); packed weights have none. */
  get weight(): Tensor {
    if (this.w.packed) throw new Step1xError(`Linear ${this.name}: weight is ${this.w.format}, not a plain tensor`, ExitCode.WEIGHTS);
    return this.w.data;
  }
  get outFeatures(): number {
    return this.wp.shape[0];
  }
  get inFeatures(): number {
    return this.wp.shape[1];
  }

  /** Output rows [start, start + count) as a Linear over views (tensors of the open scope, like any result). */
  rows(start: number, count: number): Linear {
    return new Linear(this.w.rows(start, count), this.bias?.rows(start, count), this.name);
  }

  /** Standalone load, the shape taken from the checkpoint (`<prefix>.weight`, `<prefix>.bias` per opts.bias). */
  static async load(g: Gpu, ckpt: Checkpoint, prefix: string, opts: LinearLoadOptions = {}): Promise<Linear> {
    const shape = opts.shape ?? (ckpt.info(`${prefix}.weight`).shape as [number, number]);
    const bname = `${prefix}.bias`;
    if (opts.bias === true && !ckpt.has(bname)) throw new Step1xError(`${ckpt.path}: checkpoint has no tensor "${bname}"`, ExitCode.WEIGHTS);
    const lin = new Linear(shape[0], shape[1], { bias: opts.bias !== false && ckpt.has(bname), as: opts.as });
    return lin.load(g, ckpt, prefix);
  }

  /** x [..., K] → [..., N]; with `into`, written into columns [col, col + N) of into.out (returned). */
  forward(x: Tensor, act?: Activation, into?: LinearInto): Tensor {
    return this.w.forward(x, this.bias, act, into);
  }
}

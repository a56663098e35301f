/**
 * Module: one declaration per model part, from which everything about its weights is derived. A module's
 * fields are named like the checkpoint keys (candle `vb.pp("img_attn")`, tinygrad `get_state_dict`):
 *
 *   class SingleStreamBlock extends Module {
 *     readonly linear1 = new Linear(3 * H + M, H);          → single_blocks.7.linear1.{weight,bias}
 *     readonly norm = new QKNorm(hd);                       → single_blocks.7.norm.{query,key}_norm.scale
 *     readonly modulation = new Modulation(H, 3);           → single_blocks.7.modulation.lin.{weight,bias}
 *   }
 *
 * A field holding a Param is the tensor `<prefix>.<field>`; one holding a Module is the sub-prefix
 * `<prefix>.<field>`, an array of them `<prefix>.<field>.<i>` (torch ModuleList / Sequential); other fields
 * (sizes, config) are ignored, and so are undefined ones (a part this config does not have). A module
 * whose keys are not its field names (Linear: `weight` is a Weight, not a field) overrides `entries()`.
 * From that the base derives, with no name written twice:
 *   expectedKeys(prefix)        name → shape of every tensor, in declaration order (the key check, the plan)
 *   load(g, ckpt, prefix)       every Param read from the checkpoint (Linear weights under its WeightPolicy:
 *                               fp8 / q8 / q4, LoRA adapters); on a failure part-way, what loaded is freed
 *   dispose()                   every loaded Param freed (a module may be loaded again: streamed blocks)
 *   gpuBytes(ckpt, policy, pre) GPU bytes once loaded, pool-rounded by the caller's `round` (the planner's input)
 * Loaded weights belong to no tensor scope (nn/weights.ts makes them untracked), so a block streamed in
 * mid-forward outlives the scope it was read in. Forward methods free their intermediates by scope
 * (`x.gpu.scope(() => …)`, runtime/scope.ts), never by hand: test/no-dispose.test.ts holds that.
 * A layout with other names (diffusers) maps its names onto these (models/diffusers-map.ts, a Checkpoint view).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { ExitCode, Step1xError } from '../errors.js';
import { loadWeight } from './weights.js';
import { gpuTensorBytes, weightPolicy, loadLinearWeight, type Weight, type WeightPolicy } from './weight.js';

/** One checkpoint tensor: its expected shape and, once loaded, its GPU value. */
export abstract class Param<V extends { dispose(): void } = Tensor> {
  private v: V | undefined;
  constructor(readonly shape: readonly number[]) {}

  get value(): V {
    if (!this.v) throw new Step1xError(`internal: a ${this.shape.join('×')} parameter was used before load() or after dispose()`, ExitCode.GPU);
    return this.v;
  }
  get loaded(): boolean {
    return this.v !== undefined;
  }
  /** Give the value directly (a module built from tensors rather than a checkpoint). */
  set(v: V): this {
    this.v = v;
    return this;
  }
  /** The checkpoint path of the module holding it, once loaded (`double_blocks.0.img_attn.qkv`): error messages. */
  modulePath = '';
  async load(g: Gpu, ckpt: Checkpoint, name: string, modulePath: string): Promise<void> {
    this.v = await this.read(g, ckpt, name, modulePath);
    this.modulePath = modulePath;
  }
  protected abstract read(g: Gpu, ckpt: Checkpoint, name: string, modulePath: string): Promise<V>;
  dispose(): void {
    this.v?.dispose();
    this.v = undefined;
  }
}

/** A plain tensor (norm scales, biases): as stored, 16-bit kept packed, or widened to f32 with `as: 'f32'`. */
export class TensorParam extends Param<Tensor> {
  constructor(
    shape: readonly number[],
    readonly as: 'native' | 'f32' = 'native',
  ) {
    super(shape);
  }
  protected read(g: Gpu, ckpt: Checkpoint, name: string): Promise<Tensor> {
    return loadWeight(g, ckpt, name, { shape: this.shape, as: this.as });
  }
}

/** A Linear's [N, K] matrix, loaded under the checkpoint's WeightPolicy with the LoRAs of its module path. */
export class WeightParam extends Param<Weight> {
  constructor(
    shape: readonly number[],
    /** 'f32': a plain f32 matrix whatever the policy says (kernels that take f32 operands). */
    readonly as: 'native' | 'f32' = 'native',
  ) {
    super(shape);
  }
  protected read(g: Gpu, ckpt: Checkpoint, name: string, modulePath: string): Promise<Weight> {
    return loadLinearWeight(g, ckpt, name, { shape: this.shape, modulePath, as: this.as });
  }
}

/** A tensor read to the host once (a scalar parameter such as v1.0's connector.scale_factor); never on the GPU. */
export class HostParam extends Param<{ data: Float32Array; dispose(): void }> {
  protected async read(_g: Gpu, ckpt: Checkpoint, name: string): Promise<{ data: Float32Array; dispose(): void }> {
    const data = await ckpt.readF32(name);
    if (data.length !== this.shape.reduce((a, b) => a * b, 1)) throw new Step1xError(`${ckpt.path}: "${name}" must hold ${this.shape.join('×')} values, has ${data.length}`, ExitCode.WEIGHTS);
    return { data, dispose: () => undefined };
  }
}

export const param = (...shape: number[]): TensorParam => new TensorParam(shape);

type Entry = [string, Param<{ dispose(): void }> | Module];
const join = (prefix: string, key: string): string => (prefix ? `${prefix}.${key}` : key);

export abstract class Module {
  /** This module's direct Params and sub-Modules under their key: fields in declaration order, arrays as `field.i`. */
  protected entries(): Entry[] {
    const out: Entry[] = [];
    for (const [k, v] of Object.entries(this)) {
      if (v instanceof Param || v instanceof Module) out.push([k, v]);
      else if (Array.isArray(v)) v.forEach((x, i) => (x instanceof Param || x instanceof Module) && out.push([`${k}.${i}`, x]));
    }
    return out;
  }

  /** Every Param under its full checkpoint name, with the path of the module that holds it (LoRA targets). */
  params(prefix = ''): [name: string, p: Param<{ dispose(): void }>, modulePath: string][] {
    const out: [string, Param<{ dispose(): void }>, string][] = [];
    for (const [k, v] of this.entries()) {
      if (v instanceof Module) out.push(...v.params(join(prefix, k)));
      else out.push([join(prefix, k), v, prefix]);
    }
    return out;
  }

  /** Direct sub-modules (for loading some parts and streaming others). */
  children(): [string, Module][] {
    return this.entries().filter((e): e is [string, Module] => e[1] instanceof Module);
  }

  /** name → shape of every tensor this module reads (what the checkpoint must hold, nothing more). */
  expectedKeys(prefix = ''): Map<string, number[]> {
    return new Map(this.params(prefix).map(([n, p]) => [n, [...p.shape]]));
  }

  /** Read every Param from `ckpt` (names checked beforehand by checkKeys against expectedKeys). */
  async load(g: Gpu, ckpt: Checkpoint, prefix = ''): Promise<this> {
    try {
      for (const [name, p, path] of this.params(prefix)) await p.load(g, ckpt, name, path);
    } catch (e) {
      this.dispose();
      throw e;
    }
    return this;
  }

  /** Free every loaded Param; the declaration stays (load again to use it). */
  dispose(): void {
    for (const [, p] of this.params()) p.dispose();
  }

  /**
   * GPU buffers the Params under `prefix` occupy once loaded under `policy` (default: the checkpoint's),
   * summed after `round` (the pool's bucket size): the planner's input, from the same declaration.
   */
  gpuBytes(ckpt: Checkpoint, prefix = '', round: (bytes: number) => number = (b) => b, policy: WeightPolicy = weightPolicy(ckpt)): number {
    let n = 0;
    for (const [name, p] of this.params(prefix)) if (!(p instanceof HostParam)) for (const b of gpuTensorBytes(ckpt.info(name), policy)) n += round(b);
    return n;
  }
}

/**
 * A tensor that outlives the forward it is made in (a cache carried across steps, e.g. TeaCache's residual):
 * taken out of its scope, and the one it replaces freed.
 */
export function hold(old: Tensor | undefined, next: Tensor): Tensor {
  old?.dispose();
  return next.gpu.keep(next);
}

/**
 * Hyper-parameters of Step1XEdit (`Step1XParams`) and its Qwen2Connector, and the checkpoint key set
 * they imply.
 *
 * Sources, in order: the real values (defaults below), then `step1x.json` / a golden `spec`
 * (official constructor argument names), then the checkpoint's tensor shapes: every value a shape
 * determines (hidden, depths, head dim via the q/k-norm scale, MLP width, in/out/context/vec dims,
 * connector widths and depth) is taken from the shapes, and a step1x.json value that contradicts a
 * shape is an error naming both. Only `axes_dim`, `theta` and the connector's `heads_num` cannot be
 * seen in shapes (the refiner has no q/k norm); they come from step1x.json or the real defaults.
 */
import { ExitCode, Step1xError, fail } from '../errors.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { gpuTensorBytes, weightPolicy, type WeightPolicy } from '../nn/weight.js';
import type { Module } from '../nn/module.js';
import { ditKeys } from './dit.js';
import { DoubleStreamBlock, SingleStreamBlock } from './dit-blocks.js';

/** `Step1XParams` (modules/model_edit.py). */
export interface DitParams {
  in_channels: number;
  out_channels: number;
  vec_in_dim: number;
  context_in_dim: number;
  hidden_size: number;
  mlp_ratio: number;
  num_heads: number;
  depth: number;
  depth_single_blocks: number;
  axes_dim: number[];
  theta: number;
  qkv_bias: boolean;
}

/** `Qwen2Connector(in_channels, hidden_size, heads_num, depth)` (modules/connector_edit.py). */
export interface ConnectorParams {
  in_channels: number;
  hidden_size: number;
  heads_num: number;
  depth: number;
}

/**
 * Checkpoint version: v1.0 = `step1x-edit-i1258.safetensors` (has `connector.scale_factor`; pooled mean
 * scaled by 1 + scale_factor; reference-token ids (0, row, col)); v1.1 = `step1x-edit-v1p1-official.safetensors`
 * (same keys less `connector.scale_factor`; pooled mean unscaled; reference ids (1, 1 + row, 1 + col)).
 */
export type DitVersion = 'v1.0' | 'v1.1' | 'v1.2';
export const DIT_VERSIONS: readonly DitVersion[] = ['v1.0', 'v1.1', 'v1.2'];

export interface Step1xConfig {
  dit: DitParams;
  connector: ConnectorParams;
  /** Told by the weights (see DitVersion). */
  version: DitVersion;
}

/**
 * The version the weights tell: `connector.scale_factor` present → v1.0; `text_token_mapping` (only in
 * v1.2's diffusers transformer/) → v1.2; neither → v1.1.
 */
export function versionOfKeys(has: (name: string) => boolean): DitVersion {
  return has('connector.scale_factor') ? 'v1.0' : has('text_token_mapping.weight') ? 'v1.2' : 'v1.1';
}

/** A requested version that the weights contradict is a model-files error naming both. */
export function checkVersion(source: string, weights: DitVersion, asked: DitVersion | undefined, viaFlag = true): void {
  if (asked === undefined || asked === weights) return;
  throw new Step1xError(
    `${source}: the weights are ${weights} (${weights === 'v1.0' ? 'they hold connector.scale_factor' : weights === 'v1.2' ? 'they hold text_token_mapping' : 'no connector.scale_factor'}), but ${asked} was asked for` +
      `${viaFlag ? ' (--version)' : ''}; pass --version ${weights} or the other checkpoint`,
    ExitCode.WEIGHTS,
  );
}

export function parseVersion(v: unknown, what = '--version'): DitVersion {
  if (v === 'v1.0' || v === 'v1.1' || v === 'v1.2') return v;
  if (v === '1.0' || v === '1.1' || v === '1.2') return `v${v}` as DitVersion;
  throw new Step1xError(`${what} must be v1.0, v1.1 or v1.2, got ${JSON.stringify(v)}`, ExitCode.USAGE);
}

export const REAL_DIT: Readonly<DitParams> = Object.freeze({
  in_channels: 64, out_channels: 64, vec_in_dim: 768, context_in_dim: 4096, hidden_size: 3072, mlp_ratio: 4.0,
  num_heads: 24, depth: 19, depth_single_blocks: 38, axes_dim: [16, 56, 56], theta: 10000, qkv_bias: true,
});

export const REAL_CONNECTOR: Readonly<ConnectorParams> = Object.freeze({ in_channels: 3584, hidden_size: 4096, heads_num: 32, depth: 2 });

/** Width of the connector's global output y (`global_proj_out = Linear(in_channels, 768)`, hard-coded). */
export const CONNECTOR_GLOBAL_DIM = 768;
/** Sinusoidal timestep feature size of time_in and the connector's t_embedder. */
export const TIME_FREQ_DIM = 256;

export const headDim = (p: DitParams): number => p.hidden_size / p.num_heads;
/** `int(hidden_size * mlp_ratio)` as in Python. */
export const mlpHidden = (hidden: number, ratio: number): number => Math.floor(hidden * ratio);

/** Throws a USAGE error unless the parameters describe a constructible model. */
export function validateConfig(c: Step1xConfig): void {
  const d = c.dit, k = c.connector;
  const ints: [string, number][] = [
    ['dit.in_channels', d.in_channels], ['dit.out_channels', d.out_channels], ['dit.vec_in_dim', d.vec_in_dim],
    ['dit.context_in_dim', d.context_in_dim], ['dit.hidden_size', d.hidden_size], ['dit.num_heads', d.num_heads],
    ['dit.depth', d.depth], ['dit.depth_single_blocks', d.depth_single_blocks], ['connector.in_channels', k.in_channels],
    ['connector.hidden_size', k.hidden_size], ['connector.heads_num', k.heads_num], ['connector.depth', k.depth],
  ];
  for (const [n, v] of ints) if (!Number.isInteger(v) || v < (n.includes('depth') ? 0 : 1)) fail(`step1x config: ${n} = ${v} is not a valid size`);
  for (const [n, v] of ints) if (v > (n.includes('depth') || n.includes('heads') ? 1024 : 65536)) fail(`step1x config: ${n} = ${v} is beyond any sane model; step1x.json or the checkpoint is damaged`);
  if (d.hidden_size % d.num_heads) fail(`step1x config: dit.hidden_size ${d.hidden_size} is not divisible by num_heads ${d.num_heads}`);
  const hd = headDim(d);
  if (!Array.isArray(d.axes_dim) || d.axes_dim.some((a) => !Number.isInteger(a) || a < 0 || a % 2))
    fail(`step1x config: dit.axes_dim ${JSON.stringify(d.axes_dim)} must be even integers`);
  if (d.axes_dim.reduce((a, b) => a + b, 0) !== hd)
    fail(`step1x config: sum of dit.axes_dim ${JSON.stringify(d.axes_dim)} must equal the head dim ${hd}`);
  if (d.axes_dim.length !== 3) fail(`step1x config: dit.axes_dim must have 3 entries (ids are (0, row, col)), got ${d.axes_dim.length}`);
  if (k.hidden_size % k.heads_num) fail(`step1x config: connector.hidden_size ${k.hidden_size} is not divisible by heads_num ${k.heads_num}`);
  if (k.hidden_size !== d.context_in_dim)
    fail(`step1x config: connector.hidden_size ${k.hidden_size} must equal dit.context_in_dim ${d.context_in_dim}`);
  if (d.vec_in_dim !== CONNECTOR_GLOBAL_DIM) fail(`step1x config: dit.vec_in_dim must be ${CONNECTOR_GLOBAL_DIM} (connector.global_proj_out), got ${d.vec_in_dim}`);
  if (!(d.theta > 0) || !(d.mlp_ratio > 0)) fail(`step1x config: theta ${d.theta} and mlp_ratio ${d.mlp_ratio} must be positive`);
}

/**
 * Every tensor name → shape of `Step1XEdit.state_dict()` for this config (the real config gives exactly
 * the 817 tensors of step1x-edit-i1258.safetensors), derived from the declared modules (nn/module.ts).
 */
export function expectedDitKeys(c: Step1xConfig): Map<string, number[]> {
  return ditKeys(c);
}

/** Hyper-parameters given beside the weights: step1x.json's / a golden spec's sections, and a requested version. */
export interface DitHparams {
  dit?: Record<string, unknown>;
  connector?: Record<string, unknown>;
  /** `--version`: must agree with the weights. */
  version?: DitVersion;
}

/** Shape lookup: a Checkpoint's `info(name).shape`, or undefined when absent. */
export type ShapeOf = (name: string) => readonly number[] | undefined;

function countIndexed(names: Iterable<string>, prefix: string): number {
  let n = 0;
  const re = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)\\.`);
  for (const k of names) {
    const mm = re.exec(k);
    if (mm) n = Math.max(n, Number(mm[1]) + 1);
  }
  return n;
}

/**
 * The config of a checkpoint: real defaults, overridden by `hparams` (step1x.json's `dit` / `connector`
 * or a golden spec), then checked against / completed from the tensor shapes.
 */
export function configFromCheckpoint(names: readonly string[], shapeOf: ShapeOf, hparams: DitHparams = {}, source = 'checkpoint'): Step1xConfig {
  // `version` / `mode` may sit in a golden spec's `dit` (official Step1XParams extras): not shape parameters
  const { version: specVersion, mode: _mode, ...ditGiven } = (hparams.dit ?? {}) as Record<string, unknown>;
  const given = { dit: ditGiven as Partial<DitParams>, connector: { ...(hparams.connector ?? {}) } as Partial<ConnectorParams> };
  const version = versionOfKeys((n) => shapeOf(n) !== undefined);
  const asked = hparams.version ?? (specVersion !== undefined ? parseVersion(specVersion, `${source}: dit.version`) : undefined);
  checkVersion(source, version, asked, hparams.version !== undefined);
  const inferred = { dit: {} as Partial<DitParams>, connector: {} as Partial<ConnectorParams> };
  const need = (name: string, dim: number): number => {
    const s = shapeOf(name);
    if (!s) throw new Step1xError(`${source}: checkpoint has no tensor "${name}" needed to size the DiT`, ExitCode.WEIGHTS);
    return s[dim];
  };
  const D = inferred.dit, K = inferred.connector;
  D.hidden_size = need('img_in.weight', 0);
  D.in_channels = need('img_in.weight', 1);
  D.out_channels = need('final_layer.linear.weight', 0);
  D.context_in_dim = need('txt_in.weight', 1);
  D.vec_in_dim = need('vector_in.in_layer.weight', 1);
  D.depth = countIndexed(names, 'double_blocks');
  D.depth_single_blocks = countIndexed(names, 'single_blocks');
  const qn = shapeOf('double_blocks.0.img_attn.norm.query_norm.scale') ?? shapeOf('single_blocks.0.norm.query_norm.scale');
  if (qn) D.num_heads = D.hidden_size / qn[0];
  const mlp = shapeOf('double_blocks.0.img_mlp.0.weight');
  const lin1 = shapeOf('single_blocks.0.linear1.weight');
  if (mlp) D.mlp_ratio = mlp[0] / D.hidden_size;
  else if (lin1) D.mlp_ratio = (lin1[0] - 3 * D.hidden_size) / D.hidden_size;
  if (D.depth > 0) D.qkv_bias = shapeOf('double_blocks.0.img_attn.qkv.bias') !== undefined;
  K.in_channels = need('connector.global_proj_out.weight', 1);
  K.hidden_size = need('connector.S.input_embedder.weight', 0);
  K.depth = countIndexed(names, 'connector.S.individual_token_refiner.blocks');

  const conflicts: string[] = [];
  const merge = <T extends object>(what: string, real: T, giv: Partial<T>, inf: Partial<T>): T => {
    const out = { ...real, ...giv } as T;
    for (const [key, v] of Object.entries(inf) as [keyof T, unknown][]) {
      if (v === undefined) continue;
      const gv = giv[key];
      if (gv !== undefined && JSON.stringify(gv) !== JSON.stringify(v)) conflicts.push(`${what}.${String(key)}: step1x.json says ${JSON.stringify(gv)}, tensor shapes say ${JSON.stringify(v)}`);
      (out as Record<string, unknown>)[key as string] = v;
    }
    return out;
  };
  const cfg: Step1xConfig = {
    dit: merge('dit', { ...REAL_DIT, axes_dim: [...REAL_DIT.axes_dim] }, given.dit, D),
    connector: merge('connector', { ...REAL_CONNECTOR }, given.connector, K),
    version,
  };
  if (conflicts.length) throw new Step1xError(`${source}: hyper-parameters disagree with the checkpoint: ${conflicts.join('; ')}`, ExitCode.WEIGHTS);
  try {
    validateConfig(cfg);
  } catch (e) {
    // without step1x.json the values the shapes do not tell (axes_dim, theta, ...) are the real model's
    if (e instanceof Step1xError && hparams.dit === undefined && hparams.connector === undefined)
      throw new Step1xError(
        `${source}: ${e.message}. There is no step1x.json beside this checkpoint, so the real Step1X-Edit values were assumed; ` +
          `a tiny or custom model needs a step1x.json with its "dit"/"connector" hyper-parameters`,
        ExitCode.WEIGHTS,
      );
    throw e;
  }
  return cfg;
}

/** Parameter count of a config (for memory planning and messages). */
export function paramCount(c: Step1xConfig): number {
  let n = 0;
  for (const s of expectedDitKeys(c).values()) n += s.reduce((a, b) => a * b, 1);
  return n;
}

// ---- GPU memory plan ------------------------------------------------------------------------------

export interface DitLoadOptions {
  /**
   * GPU byte budget (weights + activations, as counted by g.pool). Blocks that do not fit stay on disk
   * and are streamed: block i+1 is read while block i computes, and freed after use. Undefined = every
   * block resident.
   */
  budgetBytes?: number;
  /** Bytes to reserve for activations when planning against the budget (see estimateActivationBytes). */
  activationBytes?: number;
  /** Keep at most this many blocks resident (the first in execution order); the rest are streamed. */
  maxResidentBlocks?: number;
  /** How Linear weights load (`--weights`, `--lora`; nn/weight.ts); also what the plan counts. */
  weights?: WeightPolicy;
}

/**
 * The DiT's weight policy: with --weights q8 / q4 the non-block weights (img_in, txt_in, time_in,
 * vector_in, final_layer, the connector: 4 % of the parameters) stay as stored. Measured on dit_tiny
 * (README error table): q8 everywhere gives rel L2 1.25e-2 on out.pred, with them kept 6.3e-3.
 */
export const DIT_KEEP = (name: string): boolean => /^(img_in|txt_in|time_in|vector_in|final_layer|connector)\./.test(name);
export function ditWeightPolicy(p: WeightPolicy = {}): WeightPolicy {
  return p.keep || !(p.weights === 'q8' || p.weights === 'q4') ? p : { ...p, keep: DIT_KEEP };
}

/** Pool-bucket size of a buffer (mirrors runtime/buffer-pool.ts) so budgets match g.pool.liveBytes. */
export function pooledBytes(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 4) * 4);
  if (b <= 1 << 20) return 2 ** Math.ceil(Math.log2(b));
  if (b <= 256 << 20) return Math.ceil(b / (1 << 20)) * (1 << 20);
  return Math.ceil(b / 256) * 256;
}

/**
 * Conservative f32 activation peak of one forward over S = B·(T+L) tokens: inside a single block
 * q, k, v, their rotated copies and the attention output (~7·S·H) live next to the GELU'd MLP branch
 * (S·M), later attn + mlp + their concat (2·S·(H+M)); plus the residual streams. 4·S·(8H + 2M) bytes
 * (≈ 3.5 GB for the real model at 1024² with CFG).
 */
export function estimateActivationBytes(cfg: DitParams, B: number, L: number, T: number): number {
  const H = cfg.hidden_size, M = mlpHidden(H, cfg.mlp_ratio), S = B * (T + L);
  return 4 * S * (8 * H + 2 * M);
}

/** A transformer block in execution order: double blocks, then single blocks. */
export type Slot = { kind: 'double' | 'single'; i: number; prefix: string; bytes: number };
export interface ResidencyPlan {
  slots: Slot[];
  /** Pool bytes of the non-block weights (embedders, final layer, connector). */
  fixedBytes: number;
  /** Indices into `slots` (double blocks, then single blocks) kept on the GPU. */
  resident: Set<number>;
}

/**
 * Which blocks stay resident under `opts.budgetBytes`: all when everything fits next to the activation
 * reserve; otherwise the first blocks in execution order while they fit beside the non-block weights,
 * the reserve and two streamed blocks (current + read-ahead); the rest are streamed.
 */
/**
 * GPU bytes streamed blocks occupy: two of each kind (current + read-ahead). The pool keeps a freed
 * block's buffers for the next block of its shape (runtime/buffer-pool.ts), so once the single blocks
 * stream, the double blocks' two sets are still held beside theirs.
 */
export function streamReserve(slots: readonly Slot[]): number {
  const max = (kind: Slot['kind']) => Math.max(0, ...slots.filter((s) => s.kind === kind).map((s) => s.bytes));
  return 2 * (max('double') + max('single'));
}

export function planResidency(ckpt: Checkpoint, d: DitParams, opts: DitLoadOptions = {}): ResidencyPlan {
  const keys = ckpt.keys();
  const policy = opts.weights ? ditWeightPolicy(opts.weights) : weightPolicy(ckpt);
  const tensorBytes = (k: string) => gpuTensorBytes(ckpt.info(k), policy).reduce((s, b) => s + pooledBytes(b), 0);
  // a block's bytes from its declaration (nn/module.ts): the tensors it loads, in the formats it loads them
  const blockBytes = (m: Module, prefix: string) => m.gpuBytes(ckpt, prefix, pooledBytes, policy);
  const [dbl, sgl] = [new DoubleStreamBlock(d), new SingleStreamBlock(d)];
  const slots: Slot[] = [];
  for (let i = 0; i < d.depth; i++) slots.push({ kind: 'double', i, prefix: `double_blocks.${i}.`, bytes: blockBytes(dbl, `double_blocks.${i}`) });
  for (let i = 0; i < d.depth_single_blocks; i++) slots.push({ kind: 'single', i, prefix: `single_blocks.${i}.`, bytes: blockBytes(sgl, `single_blocks.${i}`) });
  const blockTotal = slots.reduce((s, b) => s + b.bytes, 0);
  // scale_factor is read to the host, never uploaded
  const fixedBytes = keys.filter((k) => !/^(double|single)_blocks\./.test(k) && k !== 'connector.scale_factor').reduce((s, k) => s + tensorBytes(k), 0);
  const act = opts.activationBytes ?? 0;
  const resident = new Set<number>();
  const budget = opts.budgetBytes;
  if (budget === undefined || fixedBytes + blockTotal + act <= budget) slots.forEach((_, j) => resident.add(j));
  else {
    const b = budget as number;
    const reserve = streamReserve(slots);
    let avail = b - fixedBytes - act - reserve;
    const mib = (x: number) => `${(x / 2 ** 20).toFixed(1)} MiB`;
    if (avail < 0)
      throw new Step1xError(
        `GPU budget ${mib(b)} is too small for the DiT: non-block weights ${mib(fixedBytes)} + streamed blocks ${mib(reserve)} + activations ${mib(act)}`,
        ExitCode.GPU_OOM,
      );
    for (let j = 0; j < slots.length && slots[j].bytes <= avail; j++) {
      resident.add(j);
      avail -= slots[j].bytes;
    }
  }
  if (opts.maxResidentBlocks !== undefined) for (const j of [...resident]) if (j >= opts.maxResidentBlocks) resident.delete(j);
  return { slots, fixedBytes, resident };
}


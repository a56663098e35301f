/**
 * Weight: a Linear's [N, K] matrix as the GPU holds it — data, format, block scales and attached LoRA
 * adapters — so that slicing a fused matrix (qkv, `linear1`) by output rows carries all of them along.
 *
 *   plain   f32 / f16 / bf16 tensor [N, K] (ops/linear.ts)
 *   packed  fp8_e4m3 / fp8_e5m2 / q8 / q4: u32 words [N, row_words] (+ f16 scales [N, K/QBLOCK]),
 *           dequantized inside the GEMM (ops/linear-quant.ts, shaders/gemm-quant.wgsl)
 *   adapters  unmerged LoRA (down [r, K] f32, up [N, r] f32 pre-multiplied by multiplier·alpha/r):
 *           y = W x + b + up(down(x)), used on packed weights so they stay compact
 *
 * How a checkpoint's Linear weights load is its WeightPolicy, carried by the Checkpoint the loaders are
 * given (`withWeightPolicy(ckpt, …)`, made by the model loaders from the user's `--weights` / `--lora`): the target format, converted on load when the
 * file holds another one, and the LoRAs (merged exactly as the official code into plain weights,
 * unmerged on packed ones). Which weights may be packed: 2-D Linear weights whose K is a multiple of 4
 * (fp8) or of QBLOCK (q8 / q4); everything else (norms, biases, embeddings, convolutions) loads as
 * stored (fp8 widened to bf16, exactly). The chunked conversions into packed formats are nn/weight-pack.ts.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import type { TensorInfo } from '../io/safetensors.js';
import { linear, type Activation } from '../ops/linear.js';
import { linearPacked } from '../ops/linear-quant.js';
import { add, silu, geluTanh, geluErf } from '../ops/elementwise.js';
import { writeColumns } from '../ops/layout.js';
import { canPack, encodeFp8Array, isLinearWeightName, quantizeBlocks, QBLOCK, type PackedFormat } from '../io/quant.js';
import { streamTensor } from './upload.js';
import { weightGpu } from './weights.js';
import { packBf16Streamed, streamStored } from './weight-pack.js';
import { f32ArrayToBf16, f32ArrayToF16 } from '../runtime/half.js';
import { ExitCode, Step1xError, fail, fmtShape } from '../errors.js';
import type { LoraFile } from './lora.js';

export type WeightFormat = 'f32' | 'f16' | 'bf16' | PackedFormat;
/** What `--weights` asks for: 'bf16' = plain 16-bit (packed files widened), the others pack. */
export type WeightsOption = 'bf16' | 'fp8' | 'q8' | 'q4';
export const WEIGHTS_OPTIONS: readonly WeightsOption[] = ['bf16', 'fp8', 'q8', 'q4'];

export interface Adapter {
  down: Tensor; // [r, K] f32
  up: Tensor; // [N, r] f32, scaled
}

/** Where a GEMM writes: columns [col, col + N) of `out` (col 0 and out [..., N]: the whole tensor). */
export interface LinearInto {
  out: Tensor;
  col?: number;
}

export class Weight {
  constructor(
    readonly format: WeightFormat,
    readonly N: number,
    readonly K: number,
    readonly data: Tensor,
    readonly scales?: Tensor,
    readonly adapters: readonly Adapter[] = [],
  ) {
    if (format === 'f32' || format === 'f16' || format === 'bf16') {
      if (data.rank !== 2 || data.shape[0] !== N || data.shape[1] !== K) fail(`Weight: ${format} data ${fmtShape(data.shape)} is not [${N}, ${K}]`);
    }
  }

  static plain(t: Tensor): Weight {
    if (t.rank !== 2) fail(`Weight: a Linear weight must be [N, K], got ${fmtShape(t.shape)}`);
    if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16') fail(`Weight: plain weights are f32/f16/bf16, got ${t.dtype}`);
    return new Weight(t.dtype, t.shape[0], t.shape[1], t);
  }

  get shape(): [number, number] {
    return [this.N, this.K];
  }
  get packed(): boolean {
    return !(this.format === 'f32' || this.format === 'f16' || this.format === 'bf16');
  }
  /** GPU bytes of data, scales and adapters. */
  get bytes(): number {
    return [this.data, this.scales, ...this.adapters.flatMap((a) => [a.down, a.up])].reduce((s, t) => s + (t ? t.byteLength : 0), 0);
  }

  /** Output rows [start, start + count): views of data, scales and the adapters' up factors. */
  rows(start: number, count: number): Weight {
    const adapters = this.adapters.map((a) => ({ down: a.down.reshape(a.down.shape), up: a.up.rows(start, count) }));
    return new Weight(this.format, count, this.K, this.data.rows(start, count), this.scales?.rows(start, count), adapters);
  }

  /**
   * x [..., K] → act(x Wᵀ + b (+ Σ up(down(x)))) [..., N]; with `into`, written into columns [col, col + N)
   * of into.out (ops/linear.ts `out` / `outCol`) and into.out returned.
   */
  forward(x: Tensor, b?: Tensor, act?: Activation, into?: LinearInto): Tensor {
    const o = into ? { out: into.out, outCol: into.col } : {};
    const base = (a?: Activation, to = {}) =>
      this.packed
        ? linearPacked(x, { format: this.format as PackedFormat, data: this.data, scales: this.scales, block: QBLOCK, N: this.N, K: this.K }, b, { act: a, ...to })
        : linear(x, this.data, b, { ...(a ? { act: a } : {}), ...to });
    if (!this.adapters.length) return base(act, o);
    return x.gpu.scope(() => {
      let y = base();
      for (const a of this.adapters) y = add(y, linear(linear(x, a.down), a.up));
      y = !act ? y : act === 'silu' ? silu(y) : act === 'gelu_tanh' ? geluTanh(y) : geluErf(y);
      return into ? writeColumns(y, into.out, into.col ?? 0) : y;
    });
  }

  dispose(): void {
    this.data.dispose();
    this.scales?.dispose();
    for (const a of this.adapters) {
      a.down.dispose();
      a.up.dispose();
    }
  }
}

// ---- load policy --------------------------------------------------------------------------------------

export interface WeightPolicy {
  /** Target format of Linear weights (undefined: as stored). */
  weights?: WeightsOption;
  loras?: readonly LoraFile[];
  /** Linear weights that stay as stored whatever `weights` says (the documented keep-list). */
  keep?: (name: string) => boolean;
  /**
   * Where bf16 → q8 / q4 packing runs: 'gpu' (default: ops/pack-quant.ts, also on lavapipe, where the kernel
   * measured ≈ 2× the host loop on the same cores) or 'host' (quantizeBf16Into; tests of that path).
   */
  pack?: 'gpu' | 'host';
}

/** `ckpt` under policy `p` (a new Checkpoint over the same files: io/checkpoint.ts withPolicy); the loaders read it. */
export function withWeightPolicy(ckpt: Checkpoint, p: WeightPolicy | undefined): Checkpoint {
  return ckpt.withPolicy(p);
}
/** The policy `ckpt` carries (withWeightPolicy), or none: Linear weights as stored, no LoRA. */
export function weightPolicy(ckpt: Checkpoint): WeightPolicy {
  return (ckpt.policy as WeightPolicy | undefined) ?? {};
}

/** The packed format a tensor is stored in, if any. */
export function storedFormat(info: TensorInfo): PackedFormat | undefined {
  if (info.quant) return info.quant.format;
  if (info.dtype === 'F8_E4M3') return 'fp8_e4m3';
  if (info.dtype === 'F8_E5M2') return 'fp8_e5m2';
  return undefined;
}

/** The format a 2-D Linear weight gets on the GPU under `p` (also what the VRAM plan counts). */
export function targetFormat(info: TensorInfo, p: WeightPolicy): WeightFormat {
  const stored = storedFormat(info);
  const K = info.shape[1];
  const plainOf = (): WeightFormat =>
    stored ? (stored.startsWith('fp8') ? 'bf16' : 'f32') : info.dtype === 'BF16' ? 'bf16' : info.dtype === 'F16' ? 'f16' : 'f32';
  const asStored = (): WeightFormat => (stored && info.shape.length === 2 && canPack(stored, K) ? stored : plainOf());
  if (p.weights === undefined) return asStored();
  if (p.weights === 'bf16') return plainOf();
  if (info.shape.length !== 2 || p.keep?.(info.name)) return asStored();
  const want: PackedFormat = p.weights === 'fp8' ? (stored === 'fp8_e5m2' ? 'fp8_e5m2' : 'fp8_e4m3') : p.weights;
  return canPack(want, K) ? want : asStored();
}

/** Whether a tensor loads as a Linear weight (through loadLinearWeight) rather than a plain tensor. */
export function isLinearWeight(info: TensorInfo): boolean {
  return isLinearWeightName(info.name, info.shape);
}

/**
 * GPU buffers (bytes each, before pool rounding) one tensor occupies once loaded under `p`: a Linear
 * weight in its target format (data, scales, unmerged LoRA factors), anything else as nn/weights.ts
 * uploads it (16-bit kept, fp8 widened to bf16, the rest f32).
 */
export function gpuTensorBytes(info: TensorInfo, p: WeightPolicy): number[] {
  const n = info.shape.reduce((a, b) => a * b, 1);
  if (isLinearWeight(info)) {
    const [N, K] = info.shape;
    const fmt = targetFormat(info, p);
    const out = fmt === 'q8' || fmt === 'q4' ? [fmt === 'q8' ? N * K : (N * K) / 2, ((N * K) / QBLOCK) * 2] : [formatBytes(fmt, N, K)];
    if (fmt !== 'f32' && fmt !== 'f16' && fmt !== 'bf16') {
      const path = info.name.slice(0, -'.weight'.length);
      for (const l of p.loras ?? []) {
        const m = l.module(path);
        if (m) out.push(m.rank * K * 4, N * m.rank * 4);
      }
    }
    return out;
  }
  if (info.quant) return [n * 4];
  return [n * (info.dtype === 'BF16' || info.dtype === 'F16' || info.dtype === 'F8_E4M3' || info.dtype === 'F8_E5M2' ? 2 : 4)];
}

/** GPU bytes of a Linear weight in `format` (data + scales). */
export function formatBytes(format: WeightFormat, N: number, K: number): number {
  const w4 = (b: number) => Math.ceil(b / 4) * 4;
  switch (format) {
    case 'f32':
      return N * K * 4;
    case 'f16':
    case 'bf16':
      return w4(N * K * 2);
    case 'fp8_e4m3':
    case 'fp8_e5m2':
      return w4(N * K);
    case 'q8':
      return w4(N * K) + w4((N * K) / QBLOCK * 2);
    case 'q4':
      return w4((N * K) / 2) + w4((N * K) / QBLOCK * 2);
  }
}

function u32View(b: Uint8Array): Uint32Array {
  const a = b.byteOffset % 4 === 0 && b.byteLength % 4 === 0 ? b : (() => {
    const c = new Uint8Array(Math.ceil(b.byteLength / 4) * 4);
    c.set(b);
    return c;
  })();
  return new Uint32Array(a.buffer, a.byteOffset, a.byteLength / 4);
}

/**
 * Load `name` (a [N, K] Linear weight) under the checkpoint's policy, with the LoRAs of `modulePath`
 * (default: `name` without `.weight`).
 */
export async function loadLinearWeight(g: Gpu, ckpt: Checkpoint, name: string, opts: { shape?: readonly number[]; as?: 'native' | 'f32'; modulePath?: string } = {}): Promise<Weight> {
  const info = ckpt.info(name);
  if (opts.shape && (opts.shape.length !== info.shape.length || opts.shape.some((d, i) => d !== info.shape[i])))
    throw new Step1xError(`${ckpt.path}: tensor "${name}" has shape ${fmtShape(info.shape)}, the model expects ${fmtShape(opts.shape)}`, ExitCode.WEIGHTS);
  if (info.shape.length !== 2) throw new Step1xError(`${ckpt.path}: Linear weight "${name}" has shape ${fmtShape(info.shape)}, expected [N, K]`, ExitCode.WEIGHTS);
  const p = weightPolicy(ckpt);
  const [N, K] = info.shape;
  const modulePath = opts.modulePath ?? name.replace(/\.weight$/, '');
  const factors = [];
  for (const l of p.loras ?? []) {
    const f = await l.factors(modulePath);
    if (f) factors.push(f);
  }
  const fmt = opts.as === 'f32' ? 'f32' : targetFormat(info, p);
  const stored = storedFormat(info);
  if (g.isDryRun) return dryWeight(g, name, fmt, N, K, factors.map((f) => f.rank), modulePath);

  if (fmt === 'f32' || fmt === 'f16' || fmt === 'bf16') {
    // Plain: as stored when possible, LoRA merged exactly as the official loader (f32 math, then the
    // weight's own dtype: bf16(W + s·(up @ down)·alpha/r)).
    if (!factors.length && !stored && opts.as !== 'f32' && (info.dtype === 'BF16' || info.dtype === 'F16' || info.dtype === 'F32'))
      return Weight.plain(await streamTensor(g, ckpt, name, weightGpu(g).empty([N, K], fmt, name)));
    const w = await ckpt.readF32(name);
    for (const f of factors) await mergeInto(g, w, N, K, f);
    if (fmt === 'bf16') return Weight.plain(weightGpu(g).upload(f32ArrayToBf16(w), [N, K], 'bf16', name));
    if (fmt === 'f16') return Weight.plain(weightGpu(g).upload(f32ArrayToF16(w), [N, K], 'f16', name));
    return Weight.plain(weightGpu(g).upload(w, [N, K], 'f32', name));
  }

  // Packed. From bf16 (the checkpoints' dtype) and as stored: in row chunks, straight into the GPU buffers.
  if (info.dtype === 'BF16' && !info.quant && (fmt === 'q8' || fmt === 'q4' || fmt === 'fp8_e4m3'))
    return new Weight(fmt, N, K, ...(await packBf16Streamed(g, ckpt, name, N, K, fmt, p.pack ?? 'gpu')), uploadAdapters(g, factors, N, K, modulePath));
  if (stored === fmt) return new Weight(fmt, N, K, ...(await streamStored(g, ckpt, name, N, K, fmt)), uploadAdapters(g, factors, N, K, modulePath));
  // Other sources (f32 / f16 / fp8 files, q8 ↔ q4): the whole tensor through f32.
  let codes: Uint8Array;
  let scales: Uint16Array | undefined;
  const w = await ckpt.readF32(name);
  if (fmt === 'q8' || fmt === 'q4') ({ data: codes, scales } = quantizeBlocks(w, N, K, fmt));
  else codes = encodeFp8Array(w, fmt);
  const words = u32View(codes);
  const data = weightGpu(g).upload(words, [N, words.length / N], 'u32', name);
  const sc = scales ? weightGpu(g).upload(scales, [N, K / QBLOCK], 'f16', `${name}.scales`) : undefined;
  return new Weight(fmt, N, K, data, sc, uploadAdapters(g, factors, N, K, modulePath));
}

type Factors = { down: Float32Array; up: Float32Array; rank: number; scale: number };

function uploadAdapters(g: Gpu, factors: Factors[], N: number, K: number, modulePath: string): Adapter[] {
  return factors.map((f) => {
    const up = Float32Array.from(f.up, (v) => v * f.scale);
    return { down: weightGpu(g).upload(f.down, [f.rank, K], 'f32', `${modulePath}.lora_down`), up: weightGpu(g).upload(up, [N, f.rank], 'f32', `${modulePath}.lora_up`) };
  });
}

/** Dry run (STEP1X_DRYRUN): the buffers loadLinearWeight would upload, nothing read or converted. */
function dryWeight(g: Gpu, name: string, fmt: WeightFormat, N: number, K: number, ranks: number[], modulePath: string): Weight {
  if (fmt === 'f32' || fmt === 'f16' || fmt === 'bf16') return Weight.plain(weightGpu(g).empty([N, K], fmt, name));
  const rowBytes = fmt === 'q4' ? K / 2 : K;
  const data = weightGpu(g).empty([N, Math.ceil(rowBytes / 4)], 'u32', name);
  const sc = fmt === 'q8' || fmt === 'q4' ? weightGpu(g).empty([N, K / QBLOCK], 'f16', `${name}.scales`) : undefined;
  const adapters = ranks.map((r) => ({ down: weightGpu(g).empty([r, K], 'f32', `${modulePath}.lora_down`), up: weightGpu(g).empty([N, r], 'f32', `${modulePath}.lora_up`) }));
  return new Weight(fmt, N, K, data, sc, adapters);
}

/**
 * w += s · (up @ down) in f32, (up @ down) computed on the GPU as a Linear of up [N, r] with downᵀ
 * [K, r] (split over the binding limit like any GEMM), the sum on the host in f32.
 */
async function mergeInto(g: Gpu, w: Float32Array, N: number, K: number, f: { down: Float32Array; up: Float32Array; rank: number; scale: number }): Promise<void> {
  const r = f.rank;
  const downT = new Float32Array(K * r);
  for (let i = 0; i < r; i++) for (let k = 0; k < K; k++) downT[k * r + i] = f.down[i * K + k];
  const up = weightGpu(g).upload(f.up, [N, r]);
  const dt = weightGpu(g).upload(downT, [K, r]);
  const delta = g.untracked(() => linear(up, dt));
  up.dispose();
  dt.dispose();
  const d = await g.readF32(delta);
  delta.dispose();
  const s = Math.fround(f.scale);
  for (let i = 0; i < w.length; i++) w[i] = Math.fround(w[i] + Math.fround(d[i] * s));
}


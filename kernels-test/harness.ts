/**
 * Test harness for kernels: one shared Gpu per test file, seeded random inputs, poisoned outputs,
 * explicit tolerances that print numbers on failure.
 */
import { Gpu, type GpuOptions } from '../src/runtime/gpu.js';
import type { Tensor, DType } from '../src/runtime/tensor.js';
import { f32ArrayToBf16, f32ArrayToF16, roundToBf16, bf16ArrayToF32, f16ArrayToF32 } from '../src/runtime/half.js';
import { quantizeBlocks, dequantizeBlocks, encodeFp8Array, decodeFp8Array, QBLOCK, type PackedFormat } from '../src/io/quant.js';

/** mulberry32: small, seeded, reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform values in [-scale, scale). */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

let gpu: Gpu | null = null;
/** The test file's runtime, made on the first call (with `opts`: a forced family, a binding cap). */
export async function getGpu(opts?: GpuOptions): Promise<Gpu> {
  if (!gpu) gpu = await Gpu.create(opts);
  return gpu;
}
export function releaseGpu(): void {
  gpu?.destroy();
  gpu = null;
}

/**
 * An nn.Linear weight [N, K] of host values packed as `format` (fp8 codes, or q8 / q4 blocks of QBLOCK with
 * f16 scales) on the GPU, in the shape linearPacked takes, with the values the packed weight stands for.
 */
export function uploadPacked(g: Gpu, raw: Float32Array, N: number, K: number, format: PackedFormat): { w: { format: PackedFormat; data: Tensor; scales?: Tensor; block: number; N: number; K: number }; exact: Float32Array } {
  let words: Uint32Array, scales: Tensor | undefined, exact: Float32Array;
  if (format === 'q8' || format === 'q4') {
    const q = quantizeBlocks(raw, N, K, format);
    words = new Uint32Array(q.data.buffer, 0, q.data.length / 4);
    scales = g.upload(q.scales, [N, K / QBLOCK], 'f16');
    exact = dequantizeBlocks(q, N, K, format);
  } else {
    const codes = encodeFp8Array(raw, format);
    words = new Uint32Array(codes.buffer, 0, codes.length / 4);
    exact = decodeFp8Array(codes, format);
  }
  return { w: { format, data: g.upload(words, [N, words.length / N], 'u32'), scales, block: QBLOCK, N, K }, exact };
}

/** Upload host f32 values as `dtype`; returns the tensor and the values the GPU actually holds. */
export function uploadAs(g: Gpu, x: Float32Array, shape: number[], dtype: DType = 'f32'): { t: Tensor; exact: Float32Array } {
  if (dtype === 'bf16') {
    const bits = f32ArrayToBf16(x);
    return { t: g.upload(bits, shape, 'bf16'), exact: bf16ArrayToF32(bits) };
  }
  if (dtype === 'f16') {
    const bits = f32ArrayToF16(x);
    return { t: g.upload(bits, shape, 'f16'), exact: f16ArrayToF32(bits) };
  }
  return { t: g.upload(x, shape, dtype), exact: x };
}
export { roundToBf16 };

/** Fill a fresh output-sized buffer with NaN so a kernel that skips elements is caught. */
export function poison(g: Gpu, t: Tensor): void {
  g.writeInto(t, new Float32Array(t.numel).fill(NaN));
}

export interface CloseResult {
  pass: boolean;
  maxAbs: number;
  worst: number;
  msg: string;
}

/** Elementwise |a - ref| <= atol + rtol * |ref|; NaN anywhere fails. */
export function compare(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, atol: number, rtol: number): CloseResult {
  if (got.length !== ref.length) return { pass: false, maxAbs: Infinity, worst: -1, msg: `${name}: length ${got.length} vs ref ${ref.length}` };
  let maxAbs = 0, worst = -1, bad = 0, firstBad = -1;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    if (!(d <= atol + rtol * Math.abs(ref[i]))) {
      bad++;
      if (firstBad < 0) firstBad = i;
    }
    if (!(d <= maxAbs)) {
      maxAbs = Number.isNaN(d) ? Infinity : d;
      worst = i;
    }
  }
  const msg = `${name}: maxAbs=${maxAbs.toExponential(3)} at ${worst} (got ${got[worst]}, ref ${ref[worst]}), ${bad}/${ref.length} outside atol=${atol} rtol=${rtol}` +
    (firstBad >= 0 ? `, first bad ${firstBad}: got ${got[firstBad]} ref ${ref[firstBad]}` : '');
  return { pass: bad === 0, maxAbs, worst, msg };
}

/** Jest assertion with the numbers in the failure message. */
export function expectClose(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, atol: number, rtol = 0): void {
  const r = compare(name, got, ref, atol, rtol);
  if (!r.pass) throw new Error(r.msg);
}

/** Hand the next allocation of this size a NaN-filled buffer (the pool reuses the last freed buffer of a size class). */
export function primePoison(g: Gpu, shape: number[]): void {
  const t = g.empty(shape, 'f32', 'poison');
  poison(g, t);
  t.dispose();
}

/** Run `f` with a small binding limit so the split paths are taken; always restores the limit. */
export async function withBindingLimit<T>(g: Gpu, bytes: number, f: () => Promise<T>): Promise<T> {
  const saved = g.maxBindingBytes;
  g.maxBindingBytes = bytes;
  try {
    return await f();
  } finally {
    g.maxBindingBytes = saved;
  }
}

/** A tiny test kernel: out[i] = a[i] * alpha + beta over n f32 values; 64 threads per workgroup, 1-D grid. */
export const AFFINE_WGSL = `struct P { n: u32, alpha: f32, beta: f32 }
@group(0) @binding(0) var<uniform> U: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < U.n) { out[gid.x] = a[gid.x] * U.alpha + U.beta; }
}`;

/** |got - want| <= bound elementwise (NaN fails); the message names the worst err/bound ratio. */
export function expectWithin(name: string, got: ArrayLike<number>, want: ArrayLike<number>, bound: ArrayLike<number>): void {
  let bad = 0, first = -1, worst = 0, worstI = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= bound[i])) {
      bad++;
      if (first < 0) first = i;
    }
    const r = d / bound[i];
    if (!(r <= worst)) {
      worst = Number.isNaN(r) ? Infinity : r;
      worstI = i;
    }
  }
  if (bad)
    throw new Error(`${name}: ${bad}/${want.length} outside the f16 bound; first ${first}: got ${got[first]} ref ${want[first]} bound ${bound[first].toExponential(3)}; worst err/bound ${worst.toFixed(3)} at ${worstI}`);
}

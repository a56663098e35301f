/**
 * Weight formats below 16 bits, host side: exact decoders (the plain-TS references of
 * shaders/gemm-quant.wgsl), encoders (`--weights`, `step1x convert`) and the packing the GPU reads.
 *
 *   fp8_e4m3  1 sign, 4 exponent (bias 7), 3 mantissa; subnormals; no infinities; 0x7f/0xff = NaN;
 *             max 448 (torch.float8_e4m3fn). The encoder rounds to nearest even and saturates at ±448.
 *   fp8_e5m2  1 sign, 5 exponent (bias 15), 2 mantissa (the top byte of an f16). Saturates at ±57344.
 *   q8        int8 codes along K in blocks of QBLOCK, one f16 scale per block: w = code · scale,
 *             scale = f16(max|w| / 127), code = clamp(round(w / scale), −127, 127).
 *   q4        int4 codes (stored as code + 8 in a nibble, even k in the low nibble), blocks of QBLOCK,
 *             scale = f16(max|w| / 7), code = clamp(round(w / scale), −8, 7).
 *
 * Packing (GPU and disk): row-major [N, K]; fp8 / q8 one byte per element (4 per u32, k % 4 = byte),
 * q4 half a byte (8 per u32); scales f16 [N, K / QBLOCK]. Every value is exactly representable in f16
 * (fp8 codes, int codes and f16 scales), which is what lets a subgroup-matrix GEMM stage them as f16.
 */
import { f16BitsToF32, f32ToF16Bits } from '../runtime/half.js';

export type PackedFormat = 'fp8_e4m3' | 'fp8_e5m2' | 'q8' | 'q4';
export type BlockFormat = 'q8' | 'q4';

/**
 * Elements per scale block along K. 32 = GGUF's Q8_0/Q4_0 choice; the README's error table lists the
 * measured error of 32 vs 64 / 128 on a real-size DiT block (32 costs 0.5 bit per weight for the scale).
 */
export const QBLOCK = 32;

export function isBlockFormat(f: string): f is BlockFormat {
  return f === 'q8' || f === 'q4';
}

/** Bytes of packed weight data per row of K elements. */
export function packedRowBytes(format: PackedFormat, K: number): number {
  return format === 'q4' ? K / 2 : K;
}

/** Whether a [N, K] Linear weight can be held in `format` (whole u32 words per row, whole blocks). */
export function canPack(format: PackedFormat, K: number): boolean {
  if (format === 'q8' || format === 'q4') return K % QBLOCK === 0 && K > 0;
  return K % 4 === 0 && K > 0;
}

/**
 * Whether a checkpoint tensor is a Linear weight (what --weights and `convert` pack): 2-D `*.weight`,
 * except token embeddings and the LM head (rows looked up on the host / never used).
 */
export function isLinearWeightName(name: string, shape: readonly number[]): boolean {
  return shape.length === 2 && name.endsWith('.weight') && !/(^|\.)(embed_tokens|lm_head)\.weight$/.test(name);
}

// ---- fp8 ---------------------------------------------------------------------------------------------

function decodeFp8(b: number, expBits: number, manBits: number, bias: number, ieeeSpecials: boolean): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> manBits) & ((1 << expBits) - 1);
  const m = b & ((1 << manBits) - 1);
  if (ieeeSpecials && e === (1 << expBits) - 1) return m ? NaN : s * Infinity;
  if (!ieeeSpecials && e === (1 << expBits) - 1 && m === (1 << manBits) - 1) return NaN;
  if (e === 0) return s * m * 2 ** (1 - bias - manBits);
  return s * (1 + m / (1 << manBits)) * 2 ** (e - bias);
}

export const E4M3_TABLE = Float32Array.from({ length: 256 }, (_, b) => decodeFp8(b, 4, 3, 7, false));
export const E5M2_TABLE = Float32Array.from({ length: 256 }, (_, b) => decodeFp8(b, 5, 2, 15, true));

export function fp8Table(format: 'fp8_e4m3' | 'fp8_e5m2'): Float32Array {
  return format === 'fp8_e4m3' ? E4M3_TABLE : E5M2_TABLE;
}

/** Finite non-negative codes in increasing order (codes 0..max are monotone for both formats). */
function positiveCodes(table: Float32Array): number[] {
  const codes: number[] = [];
  for (let b = 0; b < 128; b++) if (Number.isFinite(table[b])) codes.push(b);
  return codes;
}
const E4M3_POS = positiveCodes(E4M3_TABLE);
const E5M2_POS = positiveCodes(E5M2_TABLE);

/** f32 → fp8 code, round to nearest (ties to the even code), saturating; NaN → NaN code. */
export function encodeFp8(x: number, format: 'fp8_e4m3' | 'fp8_e5m2'): number {
  const table = fp8Table(format);
  const pos = format === 'fp8_e4m3' ? E4M3_POS : E5M2_POS;
  if (Number.isNaN(x)) return format === 'fp8_e4m3' ? 0x7f : 0x7e;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  let lo = 0, hi = pos.length - 1;
  if (a >= table[pos[hi]]) return sign | pos[hi];
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[pos[mid]] <= a) lo = mid;
    else hi = mid;
  }
  const dl = a - table[pos[lo]], dh = table[pos[hi]] - a;
  const code = dl < dh ? pos[lo] : dh < dl ? pos[hi] : pos[lo] % 2 === 0 ? pos[lo] : pos[hi];
  return sign | code;
}

let bf16ToE4m3: Uint8Array | null = null;
/** bf16 bits → E4M3 codes through a 65536-entry table (exact: every input is one bf16 value). */
export function bf16ToE4m3Codes(bits: Uint16Array, out = new Uint8Array(bits.length)): Uint8Array {
  if (!bf16ToE4m3) {
    const t = new Uint8Array(65536);
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    for (let b = 0; b < 65536; b++) {
      u[0] = b << 16;
      t[b] = encodeFp8(f[0], 'fp8_e4m3');
    }
    bf16ToE4m3 = t;
  }
  const t = bf16ToE4m3;
  for (let i = 0; i < bits.length; i++) out[i] = t[bits[i]];
  return out;
}

export function encodeFp8Array(x: ArrayLike<number>, format: 'fp8_e4m3' | 'fp8_e5m2'): Uint8Array {
  const out = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = encodeFp8(x[i], format);
  return out;
}

export function decodeFp8Array(codes: Uint8Array, format: 'fp8_e4m3' | 'fp8_e5m2'): Float32Array {
  const t = fp8Table(format);
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) out[i] = t[codes[i]];
  return out;
}

// ---- block int8 / int4 --------------------------------------------------------------------------------

export interface BlockQuantized {
  /** Packed codes: q8 one signed byte per element, q4 two nibbles (code + 8) per byte. */
  data: Uint8Array;
  /** f16 bits [N, K / QBLOCK]. */
  scales: Uint16Array;
}

/** Quantize a row-major [N, K] f32 matrix along K (K a multiple of `block`). */
export function quantizeBlocks(w: ArrayLike<number>, N: number, K: number, format: BlockFormat, block = QBLOCK): BlockQuantized {
  if (K % block !== 0) throw new Error(`quantizeBlocks: K = ${K} is not a multiple of the block ${block}`);
  const qmax = format === 'q8' ? 127 : 7, qmin = format === 'q8' ? -127 : -8;
  const nb = K / block;
  const scales = new Uint16Array(N * nb);
  const data = new Uint8Array(format === 'q8' ? N * K : (N * K) / 2);
  for (let n = 0; n < N; n++)
    for (let j = 0; j < nb; j++) {
      const base = n * K + j * block;
      let amax = 0;
      for (let i = 0; i < block; i++) amax = Math.max(amax, Math.abs(w[base + i]));
      let sBits = f32ToF16Bits(amax / qmax);
      let s = f16BitsToF32(sBits);
      if (!(s > 0) || !Number.isFinite(s)) {
        sBits = amax > 0 && !(s > 0) ? 0x0001 : sBits; // tiny block: smallest subnormal scale
        s = f16BitsToF32(sBits);
      }
      scales[n * nb + j] = sBits;
      for (let i = 0; i < block; i++) {
        const c = s > 0 ? Math.min(qmax, Math.max(qmin, Math.round(w[base + i] / s))) : 0;
        const e = base + i;
        if (format === 'q8') data[e] = c & 0xff;
        else data[e >> 1] |= (c + 8) << ((e & 1) * 4);
      }
    }
  return { data, scales };
}

/**
 * quantizeBlocks of a bf16 matrix [rows, K] (bits), written into `data` / `scales` (reused chunk buffers,
 * offset 0; q4 `data` is zeroed here) with the same result bit for bit: a block's max |w| is taken on the
 * bits (|bf16| orders as its low 15 bits; a NaN or Inf block takes quantizeBlocks' own per-element path),
 * and every code is the same `Math.round(w / s)` of the same f32 values. `wf` is scratch (≥ rows·K f32).
 * One pass over typed arrays, no per-element allocation: the `--weights q8|q4` load and `convert` path.
 */
export function quantizeBf16Into(bits: Uint16Array, rows: number, K: number, format: BlockFormat, data: Uint8Array, scales: Uint16Array, wf: Float32Array, block = QBLOCK): void {
  if (K % block !== 0) throw new Error(`quantizeBf16Into: K = ${K} is not a multiple of the block ${block}`);
  const n = rows * K;
  if (bits.length < n || wf.length < n || scales.length < (n / block) || data.length < (format === 'q8' ? n : n / 2))
    throw new Error(`quantizeBf16Into: buffers too small for [${rows}, ${K}]`);
  const q8 = format === 'q8';
  const qmax = q8 ? 127 : 7, qmin = q8 ? -127 : -8;
  const w32 = new Uint32Array(wf.buffer, wf.byteOffset, n);
  for (let i = 0; i < n; i++) w32[i] = bits[i] << 16;
  const nb = n / block;
  for (let j = 0; j < nb; j++) {
    const base = j * block;
    const m = maxAbsBits(bits, base, base + block);
    if (m >= 0x7f80) {
      quantizeBlockSlow(wf, base, block, qmax, qmin, q8, data, scales, j);
      continue;
    }
    u32One[0] = m << 16;
    const amax = wf32One[0];
    let sBits = f32ToF16Bits(amax / qmax);
    let s = f16BitsToF32(sBits);
    if (!(s > 0)) {
      sBits = amax > 0 ? 0x0001 : sBits; // tiny block: smallest subnormal scale (as quantizeBlocks)
      s = f16BitsToF32(sBits);
    }
    scales[j] = sBits;
    if (!(s > 0)) data.fill(q8 ? 0 : 0x88, q8 ? base : base >> 1, q8 ? base + block : (base + block) >> 1); // all-zero block: codes 0
    else if (q8) q8Codes(wf, base, base + block, s, data);
    else q4Codes(wf, base, base + block, s, data);
  }
}

// Small monomorphic loops (V8 optimizes them far better than one big function).
//
// Codes are floor(w / s + 0.5), not Math.round(w / s), which V8 runs ~5x slower on real weights: equal here
// because w (bf16, 8 significant bits) over s (f16, 11) is exactly a half-integer or at least 2^-20 away
// from one for |w / s| < 128, far more than the 2^-46 rounding error of the division and the addition; at
// an exact tie both go up (toward +Inf), and -0 vs 0 is the same code.
function maxAbsBits(bits: Uint16Array, from: number, to: number): number {
  let m = 0;
  for (let i = from; i < to; i++) {
    const a = bits[i] & 0x7fff;
    if (a > m) m = a;
  }
  return m;
}

function q8Codes(wf: Float32Array, from: number, to: number, s: number, data: Uint8Array): void {
  for (let e = from; e < to; e++) {
    const c = Math.floor(wf[e] / s + 0.5);
    data[e] = (c > 127 ? 127 : c < -127 ? -127 : c) & 0xff;
  }
}

function q4Codes(wf: Float32Array, from: number, to: number, s: number, data: Uint8Array): void {
  for (let e = from; e < to; e += 2) {
    const c0 = Math.floor(wf[e] / s + 0.5), c1 = Math.floor(wf[e + 1] / s + 0.5);
    data[e >> 1] = ((c0 > 7 ? 7 : c0 < -8 ? -8 : c0) + 8) | (((c1 > 7 ? 7 : c1 < -8 ? -8 : c1) + 8) << 4);
  }
}
const wf32One = new Float32Array(1);
const u32One = new Uint32Array(wf32One.buffer);

/** One block exactly as quantizeBlocks does it (NaN / Inf blocks). */
function quantizeBlockSlow(w: Float32Array, base: number, block: number, qmax: number, qmin: number, q8: boolean, data: Uint8Array, scales: Uint16Array, j: number): void {
  let amax = 0;
  for (let i = 0; i < block; i++) amax = Math.max(amax, Math.abs(w[base + i]));
  let sBits = f32ToF16Bits(amax / qmax);
  let s = f16BitsToF32(sBits);
  if (!(s > 0) || !Number.isFinite(s)) {
    sBits = amax > 0 && !(s > 0) ? 0x0001 : sBits;
    s = f16BitsToF32(sBits);
  }
  scales[j] = sBits;
  if (!q8) data.fill(0, base >> 1, (base + block) >> 1);
  for (let i = 0; i < block; i++) {
    const c = s > 0 ? Math.min(qmax, Math.max(qmin, Math.round(w[base + i] / s))) : 0;
    const e = base + i;
    if (q8) data[e] = c & 0xff;
    else data[e >> 1] |= (c + 8) << ((e & 1) * 4);
  }
}

/** The f16 scale bits quantizeBlocks gives a block whose max |bf16| has bits m, for every m < 2^15 (u32 each). */
export function quantScaleTable(format: BlockFormat, block = QBLOCK): Uint32Array {
  const out = new Uint32Array(1 << 15);
  const one = new Float32Array(block);
  const u = new Uint32Array(one.buffer, 0, 1);
  for (let m = 0; m < 1 << 15; m++) {
    u[0] = m << 16;
    out[m] = quantizeBlocks(one, 1, block, format, block).scales[0];
  }
  return out;
}

/** Exact dequantization (the reference the GPU kernel must match): code · f32(scale). */
export function dequantizeBlocks(q: BlockQuantized, N: number, K: number, format: BlockFormat, block = QBLOCK): Float32Array {
  const out = new Float32Array(N * K);
  const nb = K / block;
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const e = n * K + k;
      const c = format === 'q8' ? (q.data[e] << 24) >> 24 : ((q.data[e >> 1] >> ((e & 1) * 4)) & 15) - 8;
      out[e] = c * f16BitsToF32(q.scales[n * nb + Math.floor(k / block)]);
    }
  return out;
}

/** Relative L2 error ‖a − b‖ / ‖b‖. */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

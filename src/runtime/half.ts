/** Host-side half-precision conversions (bit-exact, round-to-nearest-even). No GPU objects here. */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16BitsToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7f800000) === 0x7f800000 && u & 0x7fffff) return ((u >>> 16) | 0x40) & 0xffff; // NaN stays NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function bf16ArrayToF32(bits: Uint16Array): Float32Array {
  return bf16BitsToF32Into(bits, new Float32Array(bits.length));
}

/** Widen bf16 bits into `out` (length ≥ bits.length; a reused buffer when streaming). */
export function bf16BitsToF32Into(bits: Uint16Array, out: Float32Array): Float32Array {
  const o32 = new Uint32Array(out.buffer, out.byteOffset, bits.length);
  for (let i = 0; i < bits.length; i++) o32[i] = bits[i] << 16;
  return out;
}

/** f32 bit pattern of an f16 normal, Inf or NaN (sign and NaN payload kept); -1 for zero/subnormal. */
function f16ToF32BitsNormal(h: number): number {
  const e = (h >> 10) & 0x1f;
  if (e === 0) return -1;
  const sign = (h & 0x8000) << 16;
  const m = (h & 0x3ff) << 13;
  return (sign | (e === 31 ? 0x7f800000 : (e + 112) << 23) | m) >>> 0;
}

export function f16ArrayToF32(bits: Uint16Array): Float32Array {
  return f16BitsToF32Into(bits, new Float32Array(bits.length));
}

/** Widen f16 bits into `out` (length ≥ bits.length). */
export function f16BitsToF32Into(bits: Uint16Array, out: Float32Array): Float32Array {
  const o32 = new Uint32Array(out.buffer, out.byteOffset, bits.length);
  // Written as bits: reading a NaN into a JS number would lose its sign and payload.
  for (let i = 0; i < bits.length; i++) {
    const b = f16ToF32BitsNormal(bits[i]);
    if (b >= 0) o32[i] = b;
    else out[i] = f16BitsToF32(bits[i]);
  }
  return out;
}

export function f32ArrayToBf16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = f32ToBf16Bits(x[i]);
  return out;
}

export function f32ArrayToF16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = f32ToF16Bits(x[i]);
  return out;
}

/** Round every value to the nearest bf16 (as torch's `.to(bfloat16).float()`). */
export function roundToBf16(x: Float32Array): Float32Array {
  return bf16ArrayToF32(f32ArrayToBf16(x));
}

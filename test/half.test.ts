/**
 * Host half conversions (src/runtime/half.ts), bit-exact: every bf16 and f16 bit pattern, RNE ties,
 * overflow, subnormals, NaN/Inf. The references are independent: f16 decoding by formula, rounding by
 * exact rational comparison against both neighbours.
 */
import {
  bf16BitsToF32, f32ToBf16Bits, f16BitsToF32, f32ToF16Bits,
  bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16, roundToBf16,
} from '../src/runtime/half.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (u: number) => ((u32[0] = u >>> 0), f32[0]);
const bitsOf = (x: number) => ((f32[0] = x), u32[0]);
const isNaNBf16 = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
const isNaNF16 = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;

describe('bf16', () => {
  test('all 65536 bit patterns round-trip bf16 -> f32 -> bf16 exactly (NaNs stay NaN)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = bf16ArrayToF32(all);
    const back = f32ArrayToBf16(wide);
    const wideBits = new Uint32Array(wide.buffer);
    let bad = 0;
    for (let h = 0; h < 65536; h++) {
      if (wideBits[h] !== (h << 16) >>> 0) bad++; // widening is a shift: exact, NaN payloads included
      if (bf16BitsToF32(h) !== wide[h] && !Number.isNaN(wide[h])) bad++;
      if (isNaNBf16(h)) {
        if (!isNaNBf16(back[h]) || (back[h] & 0x8000) !== (h & 0x8000)) bad++;
      } else if (back[h] !== h) bad++;
    }
    expect(bad).toBe(0);
  });

  test('round to nearest, ties to even', () => {
    // 1 + 2^-8 is exactly between bf16 1.0 (0x3f80) and 1 + 2^-7 (0x3f81): tie -> even 0x3f80.
    expect(f32ToBf16Bits(fromBits(0x3f808000))).toBe(0x3f80);
    // 0x3f818000 is a tie between 0x3f81 (odd) and 0x3f82: -> 0x3f82.
    expect(f32ToBf16Bits(fromBits(0x3f818000))).toBe(0x3f82);
    // Just above / below the tie.
    expect(f32ToBf16Bits(fromBits(0x3f808001))).toBe(0x3f81);
    expect(f32ToBf16Bits(fromBits(0x3f807fff))).toBe(0x3f80);
    // Negative mirror.
    expect(f32ToBf16Bits(fromBits(0xbf818000))).toBe(0xbf82);
    // Largest finite f32 rounds up to +Inf; the value just below the bf16 max + half ulp stays finite.
    expect(f32ToBf16Bits(3.4028234663852886e38)).toBe(0x7f80);
    expect(f32ToBf16Bits(fromBits(0x7f7f7fff))).toBe(0x7f7f);
    // Subnormals round like normals.
    expect(f32ToBf16Bits(fromBits(0x00008000))).toBe(0x0000);
    expect(f32ToBf16Bits(fromBits(0x00018000))).toBe(0x0002);
    expect(f32ToBf16Bits(-0)).toBe(0x8000);
  });

  test('random f32 values round to the nearest bf16 (checked against both neighbours)', () => {
    let s = 12345;
    for (let i = 0; i < 20000; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const u = (s ^ (s << 7)) >>> 0;
      const x = fromBits(u);
      if (!Number.isFinite(x)) continue;
      const h = f32ToBf16Bits(x);
      const lo = fromBits((u & 0xffff0000) >>> 0), hi = fromBits(((u & 0xffff0000) + 0x10000) >>> 0);
      const got = bf16BitsToF32(h);
      const dl = Math.abs(x - lo), dh = Math.abs(hi - x);
      const want = dl < dh ? lo : dh < dl ? hi : ((u >>> 16) & 1) === 0 ? lo : hi;
      if (got !== want) throw new Error(`bf16(${x}) bits 0x${u.toString(16)}: got ${got}, want ${want}`);
    }
  });

  test('NaN and Inf', () => {
    expect(f32ToBf16Bits(Infinity)).toBe(0x7f80);
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(isNaNBf16(f32ToBf16Bits(NaN))).toBe(true);
    // A NaN whose payload lives only in the low 16 bits must not become Inf.
    expect(isNaNBf16(f32ToBf16Bits(fromBits(0x7f800001)))).toBe(true);
    expect(isNaNBf16(f32ToBf16Bits(fromBits(0xff800001)))).toBe(true);
    expect(Number.isNaN(bf16BitsToF32(0x7fc0))).toBe(true);
    expect(bf16BitsToF32(0xff80)).toBe(-Infinity);
  });

  test('roundToBf16 equals widen(narrow(x))', () => {
    const x = new Float32Array([0.1, -3.14159, 1e-40, 65504, 1 / 3]);
    expect(Array.from(roundToBf16(x))).toEqual(Array.from(bf16ArrayToF32(f32ArrayToBf16(x))));
  });
});

describe('f16', () => {
  /** Independent decoder: IEEE binary16 by formula. */
  const decode = (h: number) => {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
    if (e === 31) return m ? NaN : s * Infinity;
    return e === 0 ? s * m * 2 ** -24 : s * (1024 + m) * 2 ** (e - 25);
  };

  test('all 65536 bit patterns decode exactly and round-trip f16 -> f32 -> f16', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = f16ArrayToF32(all);
    const back = f32ArrayToF16(wide);
    const wideBits = new Uint32Array(wide.buffer);
    let bad = 0;
    for (let h = 0; h < 65536; h++) {
      const want = decode(h);
      if (!(Object.is(wide[h], want) || (Number.isNaN(want) && Number.isNaN(wide[h])))) bad++;
      // NaNs keep sign and payload when widened (bits, not a canonical JS NaN).
      if (isNaNF16(h) && wideBits[h] !== ((((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13)) >>> 0)) bad++;
      if (isNaNF16(h)) {
        if (!isNaNF16(back[h]) || (back[h] & 0x8000) !== (h & 0x8000)) bad++;
      } else if (back[h] !== h) bad++;
    }
    expect(bad).toBe(0);
  });

  test('every f32 midpoint between adjacent f16 values rounds to the even one', () => {
    let bad = 0;
    for (let h = 0; h < 0x7bff; h++) {
      // The midpoint of two adjacent finite f16 values is exactly representable in f32.
      const mid = (decode(h) + decode(h + 1)) / 2;
      const want = h & 1 ? h + 1 : h;
      if (f32ToF16Bits(mid) !== want) bad++;
      if (f32ToF16Bits(-mid) !== (want | 0x8000)) bad++;
      // Nudged one f32 ulp off the midpoint it goes to the nearer side.
      const b = bitsOf(mid);
      if (f32ToF16Bits(fromBits(b + 1)) !== h + 1) bad++;
      if (f32ToF16Bits(fromBits(b - 1)) !== h) bad++;
    }
    expect(bad).toBe(0);
  });

  test('overflow, underflow, NaN and Inf', () => {
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65519.99)).toBe(0x7bff); // below max + half ulp (65520)
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // tie at overflow rounds to even = Inf
    expect(f32ToF16Bits(1e6)).toBe(0x7c00);
    expect(f32ToF16Bits(-1e6)).toBe(0xfc00);
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00);
    expect(f32ToF16Bits(-Infinity)).toBe(0xfc00);
    expect(isNaNF16(f32ToF16Bits(NaN))).toBe(true);
    expect(isNaNF16(f32ToF16Bits(fromBits(0x7f800001)))).toBe(true);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // half of it: tie -> even (0)
    expect(f32ToF16Bits(fromBits(bitsOf(2 ** -25) + 1))).toBe(0x0001);
    expect(f32ToF16Bits(1e-10)).toBe(0x0000);
    expect(f32ToF16Bits(-1e-10)).toBe(0x8000);
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(Number.isNaN(f16BitsToF32(0x7e00))).toBe(true);
  });
});

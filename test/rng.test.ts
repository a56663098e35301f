/**
 * The documented --seed RNG (README "Reproducible noise"): SplitMix64 → xoshiro128** → Box–Muller → bf16.
 * Known-answer vectors come from an independent reference written here from the published algorithms
 * (Vigna's splitmix64.c / xoshiro128starstar.c; Box & Muller 1958), not from our own output; the first
 * SplitMix64 outputs for seed 0 are the published ones, which checks the reference itself.
 */
import { Xoshiro128, randnF32, initialNoise, splitmix64 } from '../src/pipeline/rng.js';
import { roundToBf16 } from '../src/runtime/half.js';

// ---- reference --------------------------------------------------------------------------------------
const M64 = (x: bigint) => BigInt.asUintN(64, x);

/** splitmix64.c: x += 0x9e3779b97f4a7c15; z = (z ^ z>>30) * 0xbf58476d1ce4e5b9; (z ^ z>>27) * 0x94d049bb133111eb; z ^ z>>31. */
function refSplitMix64(seed: bigint): () => bigint {
  let x = M64(seed);
  return () => {
    x = M64(x + 0x9e3779b97f4a7c15n);
    let z = x;
    z = M64((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = M64((z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    return z ^ (z >> 31n);
  };
}

/** xoshiro128starstar.c on four u32 words, in exact integer arithmetic (bigints mod 2^32). */
function refXoshiro128ss(state: [bigint, bigint, bigint, bigint]): () => number {
  const s = [...state];
  const M32 = (x: bigint) => BigInt.asUintN(32, x);
  const rotl = (x: bigint, k: bigint) => M32((x << k) | (x >> (32n - k)));
  return () => {
    const result = M32(rotl(M32(s[1] * 5n), 7n) * 9n);
    const t = M32(s[1] << 9n);
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11n);
    return Number(result);
  };
}

/** The README's seeding: two SplitMix64 outputs, low word first. */
function refGenerator(seed: number): () => number {
  const sm = refSplitMix64(BigInt(seed));
  const a = sm(), b = sm();
  const lo = (x: bigint) => x & 0xffffffffn, hi = (x: bigint) => x >> 32n;
  return refXoshiro128ss([lo(a), hi(a), lo(b), hi(b)]);
}

/** Box–Muller in pairs on u = (next + 0.5) / 2^32, computed in f64, stored as f32. */
function refRandn(n: number, seed: number): Float32Array {
  const next = refGenerator(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = (next() + 0.5) / 2 ** 32, u2 = (next() + 0.5) / 2 ** 32;
    const r = Math.sqrt(-2 * Math.log(u1)), th = 2 * Math.PI * u2;
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

/** f32 → bf16 round-to-nearest-even → f32, on the bit pattern. */
function refBf16(x: Float32Array): Float32Array {
  const u = new Uint32Array(Float32Array.from(x).buffer);
  for (let i = 0; i < u.length; i++) {
    const lsb = (u[i] >>> 16) & 1;
    u[i] = (((u[i] + 0x7fff + lsb) >>> 16) << 16) >>> 0;
  }
  return new Float32Array(u.buffer);
}

/** refGenerator(42)'s first outputs, frozen when this test was written. */
const FROZEN_SEED42 = [1776835114, 4165204688, 17111135, 2317295270];

// ---- known answers ----------------------------------------------------------------------------------

test('the reference SplitMix64 gives the published outputs for seed 0; ours equals it', () => {
  const ref = refSplitMix64(0n);
  const published = [0xe220a8397b1dcdafn, 0x6e789e6aa1b965f4n, 0x06c45d188009454fn, 0xf88bb8a8724c81ecn];
  expect(published.map(() => ref())).toEqual(published);
  for (const seed of [0n, 1n, 42n, 2n ** 53n - 1n]) {
    const a = refSplitMix64(seed), b = splitmix64(seed);
    const ra = Array.from({ length: 6 }, () => a()), rb = Array.from({ length: 6 }, () => b());
    expect(rb.map((x) => x.toString(16))).toEqual(ra.map((x) => x.toString(16)));
  }
});

test('xoshiro128** seeded by SplitMix64 equals the reference, 1000 outputs for several seeds', () => {
  for (const seed of [0, 1, 42, 7004, 123456789, Number.MAX_SAFE_INTEGER]) {
    const ours = new Xoshiro128(seed), ref = refGenerator(seed);
    const a = Array.from({ length: 1000 }, () => ours.nextU32()), b = Array.from({ length: 1000 }, () => ref());
    const i = a.findIndex((x, k) => x !== b[k]);
    if (i >= 0) throw new Error(`seed ${seed}: output ${i} is ${a[i]}, reference ${b[i]}`);
  }
  // A frozen vector of the reference (seed 42), so that a change to the reference itself is noticed too.
  const r = refGenerator(42);
  expect(Array.from({ length: 4 }, () => r())).toEqual(FROZEN_SEED42);
  expect(() => new Xoshiro128(-1)).toThrow(/non-negative/);
  expect(() => new Xoshiro128(1.5)).toThrow(/non-negative/);
});

test('uniforms lie in (0, 1); Box–Muller normals equal the reference exactly (odd length too)', () => {
  const g = new Xoshiro128(3), ref = refGenerator(3);
  for (let i = 0; i < 100; i++) expect(g.uniform()).toBe((ref() + 0.5) / 2 ** 32);
  for (const [n, seed] of [[1, 0], [7, 42], [2560, 7004], [10_001, 9]]) {
    const a = randnF32(n, seed), b = refRandn(n, seed);
    const i = a.findIndex((x, k) => x !== b[k]);
    if (i >= 0) throw new Error(`randn(${n}, ${seed})[${i}] = ${a[i]}, reference ${b[i]}`);
  }
});

test('randn has mean ≈ 0 and variance ≈ 1', () => {
  const x = randnF32(200_001, 7);
  let m = 0, v = 0;
  for (const t of x) m += t;
  m /= x.length;
  for (const t of x) v += (t - m) ** 2;
  v /= x.length;
  expect(Math.abs(m)).toBeLessThan(0.01);
  expect(Math.abs(v - 1)).toBeLessThan(0.01);
});

test('initial noise [1, 16, h, w] = bf16(reference randn) in row-major order', () => {
  const n = initialNoise(42, 8, 10);
  expect(n.length).toBe(16 * 8 * 10);
  expect(Array.from(n)).toEqual(Array.from(refBf16(refRandn(16 * 8 * 10, 42))));
  expect(Array.from(roundToBf16(n))).toEqual(Array.from(n));
});

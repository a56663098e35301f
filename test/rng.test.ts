/**
 * The documented --seed RNG (README "Reproducible noise"): SplitMix64 → xoshiro128** → Box–Muller → bf16.
 * Known-answer vectors come from an independent reference written here from the published algorithms
 * (Vigna's splitmix64.c / xoshiro128starstar.c; Box & Muller 1958), not from our own output; the first
 * SplitMix64 outputs for seed 0 are the published ones, which checks the reference itself.
 */
import { Xoshiro128, randnF32, initialNoise, posteriorEps, splitmix64 } from '../src/pipeline/rng.js';
import { roundToBf16 } from '../src/runtime/half.js';
import { refBf16, refGenerator, refRandn, refSplitMix64 } from './util/ref-rng.js';

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

test('known answers for both streams an edit draws: noise from the seed, the posterior ε from seed + 1', () => {
  // the edit pipeline draws the noise with initialNoise(seed) and, for a sampled reference latent,
  // ε with posteriorEps(seed) (pipeline/stages.ts): moving either stream's seed breaks this test
  const noise = initialNoise(42, 8, 10), eps = posteriorEps(42, 8, 10);
  expect(Array.from(eps)).toEqual(Array.from(refRandn(16 * 8 * 10, 43)));
  expect(Array.from(noise.subarray(0, 4))).toEqual([1.3046875, -0.25, -3.21875, -0.81640625]); // bf16(refRandn(42)), frozen
  expect(Array.from(eps.subarray(0, 4))).toEqual([-0.8807096481323242, -1.252373456954956, 0.3162897527217865, -1.397977352142334]); // refRandn(43), frozen
  expect(Array.from(posteriorEps(42, 8, 10, 16))).not.toEqual(Array.from(randnF32(16 * 8 * 10, 42)));
});

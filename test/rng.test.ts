/** The documented --seed RNG: reproducible, standard normal, bf16-rounded noise. */
import { Xoshiro128, randnF32, initialNoise } from '../src/pipeline/rng.js';
import { roundToBf16 } from '../src/runtime/half.js';

test('xoshiro128** reproduces itself and differs across seeds', () => {
  const a = new Xoshiro128(42), b = new Xoshiro128(42), c = new Xoshiro128(43);
  const sa = Array.from({ length: 8 }, () => a.nextU32());
  expect(Array.from({ length: 8 }, () => b.nextU32())).toEqual(sa);
  expect(Array.from({ length: 8 }, () => c.nextU32())).not.toEqual(sa);
  expect(() => new Xoshiro128(-1)).toThrow(/non-negative/);
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

test('initial noise is bf16-rounded and seed-stable', () => {
  const n = initialNoise(42, 8, 10);
  expect(n.length).toBe(16 * 8 * 10);
  expect(Array.from(roundToBf16(n))).toEqual(Array.from(n));
  expect(Array.from(initialNoise(42, 8, 10))).toEqual(Array.from(n));
});

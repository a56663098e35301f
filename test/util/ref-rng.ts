/**
 * An independent reference of the documented --seed RNG, written from the published algorithms (Vigna's
 * splitmix64.c and xoshiro128starstar.c, Box–Muller 1958) in exact bigint arithmetic, for known-answer
 * tests (test/rng.test.ts) and for noise files the CLI tests pass with --noise (test/edit-cli.test.ts).
 */
const M64 = (x: bigint) => BigInt.asUintN(64, x);

/** splitmix64.c: x += 0x9e3779b97f4a7c15; z = (z ^ z>>30) * 0xbf58476d1ce4e5b9; (z ^ z>>27) * 0x94d049bb133111eb; z ^ z>>31. */
export function refSplitMix64(seed: bigint): () => bigint {
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
export function refXoshiro128ss(state: [bigint, bigint, bigint, bigint]): () => number {
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
export function refGenerator(seed: number): () => number {
  const sm = refSplitMix64(BigInt(seed));
  const a = sm(), b = sm();
  const lo = (x: bigint) => x & 0xffffffffn, hi = (x: bigint) => x >> 32n;
  return refXoshiro128ss([lo(a), hi(a), lo(b), hi(b)]);
}

/** Box–Muller in pairs on u = (next + 0.5) / 2^32, computed in f64, stored as f32. */
export function refRandn(n: number, seed: number): Float32Array {
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
export function refBf16(x: Float32Array): Float32Array {
  const u = new Uint32Array(Float32Array.from(x).buffer);
  for (let i = 0; i < u.length; i++) {
    const lsb = (u[i] >>> 16) & 1;
    u[i] = (((u[i] + 0x7fff + lsb) >>> 16) << 16) >>> 0;
  }
  return new Float32Array(u.buffer);
}


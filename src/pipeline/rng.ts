/**
 * The documented random number generator behind `--seed`.
 *
 * The official code draws its initial noise with `torch.randn` on a CUDA generator in bf16, which no other
 * runtime can reproduce. step1x instead uses, for a seed s (an integer 0 ≤ s < 2^53):
 *   state  = xoshiro128** seeded with four 32-bit words from SplitMix64(s)
 *   u1, u2 = (next() + 0.5) / 2^32            (two uniforms in (0, 1))
 *   z0, z1 = Box–Muller: r = sqrt(-2 ln u1); r·cos(2π u2), r·sin(2π u2)
 * values are produced in pairs, in row-major order of the noise tensor [1, 16, H/8, W/8], then rounded to
 * bf16 as the official noise is. The same seed gives the same noise on every machine. To reproduce a
 * result of another implementation exactly, pass its noise with `--noise FILE` instead.
 */
import { roundToBf16 } from '../runtime/half.js';

/** SplitMix64 (Steele, Lea & Flood 2014), the seeder of xoshiro: 64-bit outputs as bigints. */
export function splitmix64(seed: bigint): () => bigint {
  let x = seed & 0xffffffffffffffffn;
  return () => {
    x = (x + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
    let z = x;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
    return z ^ (z >> 31n);
  };
}

export class Xoshiro128 {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
    const sm = splitmix64(BigInt(seed));
    const a = sm(), b = sm();
    this.s[0] = Number(a & 0xffffffffn);
    this.s[1] = Number(a >> 32n);
    this.s[2] = Number(b & 0xffffffffn);
    this.s[3] = Number(b >> 32n);
  }
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }
  /** Uniform in the open interval (0, 1). */
  uniform(): number {
    return (this.nextU32() + 0.5) / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** `n` standard normal values (f32), Box–Muller in pairs. */
export function randnF32(n: number, seed: number): Float32Array {
  const g = new Xoshiro128(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = g.uniform(), u2 = g.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** Initial latent noise [1, 16, h, w] for a seed, bf16-rounded like the official bf16 `torch.randn`. */
export function initialNoise(seed: number, h: number, w: number, channels = 16): Float32Array {
  return roundToBf16(randnF32(channels * h * w, seed));
}

/**
 * The two streams one edit draws from `--seed S`: the initial noise from S (initialNoise) and, when the
 * reference latent is sampled from the VAE posterior (`--sample-encode`), its ε from S + 1 (f32, not
 * rounded: the posterior sample is computed in f32). test/rng.test.ts pins both with known answers.
 */
export const POSTERIOR_EPS_SEED_OFFSET = 1;

/** ε [1, channels, h, w] of the sampled reference latent of an edit with seed `seed` (the edit's seed, not offset). */
export function posteriorEps(seed: number, h: number, w: number, channels = 16): Float32Array {
  return randnF32(channels * h * w, seed + POSTERIOR_EPS_SEED_OFFSET);
}

/**
 * rmsNormRope (src/ops/qk-norm-rope.ts): the fused FLUX QK-norm + RoPE against the f64 composition of the
 * plain-TS references (rmsNorm over Dh, then ropeFluxRef on the table rows [at, at + Ls)), written into
 * rows [at, at + Ls) of a joint tensor whose other rows must stay as they were; odd shapes (1, 3, 17, 255
 * tokens, Dh up to 258 so lanes loop), batch-broadcast tables, bf16/f16 scales, the token-chunk split.
 * Tolerance 4e-6 abs + 4e-6 rel (a sum of squares, a rsqrt, two products and a 2-term sum, all f32).
 * And the claim the DiT relies on: bit-identical to rmsNorm then applyRopeFlux for Dh <= 128.
 */
import { getGpu, releaseGpu, randn, expectClose, uploadAs } from './harness.js';
import { rmsNorm as rmsNormRef } from './ref/norm.js';
import { ropeFluxRef } from './ref/rope.js';
import { rmsNormRope } from '../src/ops/qk-norm-rope.js';
import { rmsNorm } from '../src/ops/norm.js';
import { applyRopeFlux } from '../src/ops/rope.js';
import type { DType } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const EPS = 1e-6;
const SENTINEL = 7.25;

/** Joint [B, Lt, H, Dh] filled with SENTINEL, rows [at, at + Ls) of each batch item = rope(rmsNorm(x)·w). */
function jointRef(x: Float32Array, w: Float32Array, pe: Float32Array, B: number, Ls: number, H: number, Dh: number, Lt: number, at: number, Bp: number): Float64Array {
  const n = rmsNormRef(x, Dh, w, EPS);
  // the table rows [at, at + Ls) of every table batch item, as a table of Ls tokens
  const P = 2 * Dh, peS = new Float64Array(Bp * Ls * P);
  for (let b = 0; b < Bp; b++) peS.set(pe.subarray((b * Lt + at) * P, (b * Lt + at + Ls) * P), b * Ls * P);
  const r = ropeFluxRef(n, peS, B, Ls, H, Dh, Bp);
  const out = new Float64Array(B * Lt * H * Dh).fill(SENTINEL);
  const W = H * Dh;
  for (let b = 0; b < B; b++) out.set(r.subarray(b * Ls * W, (b + 1) * Ls * W), (b * Lt + at) * W);
  return out;
}

// B, Ls, heads, Dh, Lt, at, table batch, scale dtype
const CASES: [number, number, number, number, number, number, number, DType][] = [
  [1, 1, 1, 2, 1, 0, 1, 'f32'],
  [2, 3, 3, 12, 7, 4, 2, 'bf16'],
  [2, 17, 2, 24, 17, 0, 1, 'f32'],
  [1, 255, 1, 10, 258, 3, 1, 'f16'],
  [3, 17, 5, 258, 20, 2, 3, 'f32'],
  [2, 5, 3, 128, 11, 6, 1, 'bf16'],
];

describe('rmsNormRope', () => {
  for (const [B, Ls, H, Dh, Lt, at, Bp, wdt] of CASES) {
    test(`B=${B} Ls=${Ls} heads=${H} Dh=${Dh} into rows [${at}, ${at + Ls}) of ${Lt}, table batch ${Bp}, w ${wdt}`, async () => {
      const g = await getGpu();
      const x = randn(B * Ls * H * Dh, Dh + Ls, 3), pe = randn(Bp * Lt * Dh * 2, 7 + Lt);
      const w = uploadAs(g, randn(Dh, 11 + Dh), [Dh], wdt);
      const xt = g.upload(x, [B, Ls, H, Dh]), pt = g.upload(pe, [Bp, Lt, Dh / 2, 2, 2]);
      const out = g.upload(new Float32Array(B * Lt * H * Dh).fill(SENTINEL), [B, Lt, H, Dh]);
      const y = rmsNormRope(xt, w.t, pt, EPS, { out, at });
      expect(y).toBe(out);
      expectClose(`joint B=${B} Ls=${Ls} Dh=${Dh}`, await g.readF32(out), jointRef(x, w.exact, pe, B, Ls, H, Dh, Lt, at, Bp), 4e-6, 4e-6);
      for (const t of [xt, pt, out, w.t]) t.dispose();
    });
  }

  test('token-chunk split under a small binding limit (misaligned rows, broadcast table)', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    const [B, Ls, H, Dh, Lt, at] = [2, 37, 3, 20, 45, 5];
    const x = randn(B * Ls * H * Dh, 5, 2), pe = randn(Lt * Dh * 2, 6), w = randn(Dh, 4);
    const xt = g.upload(x, [B, Ls, H, Dh]), pt = g.upload(pe, [1, Lt, Dh / 2, 2, 2]), wt = g.upload(w, [Dh]);
    const out = g.upload(new Float32Array(B * Lt * H * Dh).fill(SENTINEL), [B, Lt, H, Dh]);
    try {
      g.maxBindingBytes = 1500; // 240 B per x/out token, 160 B per pe row → 5 tokens per chunk
      rmsNormRope(xt, wt, pt, EPS, { out, at });
      expectClose('split', await g.readF32(out), jointRef(x, w, pe, B, Ls, H, Dh, Lt, at, 1), 4e-6, 4e-6);
    } finally {
      g.maxBindingBytes = saved;
    }
    for (const t of [xt, pt, wt, out]) t.dispose();
  });

  for (const Dh of [24, 128]) {
    test(`bit-identical to rmsNorm then applyRopeFlux (Dh=${Dh})`, async () => {
      const g = await getGpu();
      const [B, L, H] = [2, 19, 3];
      const x = randn(B * L * H * Dh, 3 + Dh, 4), pe = randn(L * Dh * 2, 9), w = randn(Dh, 2);
      const xt = g.upload(x, [B, L, H, Dh]), pt = g.upload(pe, [1, L, Dh / 2, 2, 2]), wt = g.upload(w, [Dh]);
      const fused = rmsNormRope(xt, wt, pt, EPS);
      const n = rmsNorm(xt, wt, EPS), two = applyRopeFlux(n, pt);
      const [a, b] = [await g.readF32(fused), await g.readF32(two)];
      let diff = 0;
      for (let i = 0; i < a.length; i++) if (Object.is(a[i], b[i]) === false) diff++;
      expect(diff).toBe(0);
      for (const t of [xt, pt, wt, fused, n, two]) t.dispose();
    });
  }

  test('argument errors name the shapes', async () => {
    const g = await getGpu();
    const x = g.upload(randn(2 * 3 * 8, 1), [1, 2, 3, 8]), w = g.upload(randn(8, 2), [8]);
    const pe = g.upload(randn(2 * 4 * 4, 1), [1, 2, 4, 2, 2]), out = g.empty([1, 3, 3, 8]);
    expect(() => rmsNormRope(x, g.upload(randn(6, 1), [6]), pe, EPS)).toThrow(/w \[6\] must be \[8\] for x \[1,2,3,8\]/);
    expect(() => rmsNormRope(x, w, pe, EPS, { out, at: 0 })).toThrow(/pe \[1,2,4,2,2\] must be \[1\|1, 3, 4, 2, 2\]/);
    const pe3 = g.upload(randn(3 * 4 * 4, 1), [1, 3, 4, 2, 2]);
    expect(() => rmsNormRope(x, w, pe3, EPS, { out, at: 2 })).toThrow(/out \[1,3,3,8\] must be \[1, L ≥ 4, 3, 8\] to take rows \[2, 4\)/);
    for (const t of [x, w, pe, pe3, out]) t.dispose();
  });
});

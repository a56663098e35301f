/**
 * The memory-bound ops and attention with f16 activation storage (src/ops/act-dtype.ts) vs the f64
 * references, inside withActivations(g, 'f16'):
 *   norm.wgsl   layerNorm (affine), rmsNorm, layerNormModulate: x stored f16 or f32, out f16; gatedResidual
 *               with an f16 branch output (the residual stream stays f32); a norm output beyond 65504
 *               clamped and counted in overflow word 2
 *   rope.wgsl   FLUX rope, f16 in and out
 *   qk-norm-rope.wgsl  fused QK-norm + RoPE, f16 x into rows of an f16 joint tensor or a new f16 tensor
 *   layout.wgsl concat / slice of f16 tensors (exact), odd extents included (the 2-byte copy kernel)
 *   attention-sgmat.wgsl  f16 q/k/v, f16 out
 * at odd sizes (1, 3, 17, 255). Only where the device can store f16 (the trixie root, scripts/sgmat-env.sh,
 * STEP1X_KERNELS=subgroup-matrix; scripts/ci-sgmat.sh runs this file there); elsewhere each test says so
 * and returns. Tolerance: the f32 op on the f16-exact inputs, then the f16 output's rounding, 2^-11 |v|
 * (plus 2^-25 for subnormals), with 1e-5 for the f32 arithmetic (row sums over up to 255 values).
 */
import { getGpu, releaseGpu, randn, uploadAs, expectClose } from './harness.js';
import * as nref from './ref/norm.js';
import { ropeFluxRef } from './ref/rope.js';
import { attentionRef } from './ref/attention.js';
import * as lref from './ref/layout.js';
import { canStoreF16, f16Overflows, withActivations } from '../src/ops/act-dtype.js';
import { layerNorm, rmsNorm, layerNormModulate, gatedResidual } from '../src/ops/norm.js';
import { applyRopeFlux } from '../src/ops/rope.js';
import { rmsNormRope } from '../src/ops/qk-norm-rope.js';
import { attention } from '../src/ops/attention.js';
import { concat, slice } from '../src/ops/layout.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

async function f16Gpu(what: string): Promise<Gpu | null> {
  const g = await getGpu();
  if (canStoreF16(g)) return g;
  console.log(`act-f16-ops: ${what} not run here: adapter "${g.caps.description}" (kernels ${g.kernels}, precision ${g.precision}) cannot store activations in f16 (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

/** Read an f16 result and compare it with the f64 reference under the f16 output bound. */
async function expectF16(name: string, t: Tensor, want: ArrayLike<number>, rel = 2 ** -11): Promise<void> {
  expect(t.dtype).toBe('f16');
  const got = await t.gpu.readF32(t);
  let bad = -1;
  for (let i = 0; i < want.length && bad < 0; i++) if (!(Math.abs(got[i] - want[i]) <= rel * Math.abs(want[i]) + 2 ** -25 + 1e-5)) bad = i;
  if (bad >= 0) throw new Error(`${name}: element ${bad}: got ${got[bad]}, ref ${want[bad]} (f16 bound ${rel} rel)`);
}

const SIZES: [number, number][] = [[1, 1], [3, 17], [17, 3], [17, 255], [1, 255]];

describe('norms with f16 storage', () => {
  test('layerNorm / rmsNorm: x f16 or f32, out f16', async () => {
    const g = await f16Gpu('f16 norms');
    if (!g) return;
    for (const [rows, C] of SIZES)
      for (const xdt of ['f16', 'f32'] as const) {
        const x = uploadAs(g, randn(rows * C, rows + C, 3), [rows, C], xdt);
        const w = g.upload(randn(C, C + 1), [C]), b = g.upload(randn(C, C + 2), [C]);
        const wh = await g.readF32(w), bh = await g.readF32(b);
        const [ln, rn] = withActivations(g, 'f16', () => [layerNorm(x.t, w, b, 1e-6), rmsNorm(x.t, w, 1e-6)]);
        await expectF16(`layerNorm x=${xdt} [${rows}, ${C}]`, ln, nref.layerNorm(x.exact, C, wh, bh, 1e-6));
        await expectF16(`rmsNorm x=${xdt} [${rows}, ${C}]`, rn, nref.rmsNorm(x.exact, C, wh, 1e-6));
        for (const t of [x.t, w, b, ln, rn]) t.dispose();
      }
  });
  test('layerNormModulate (fused) out f16; gatedResidual with f16 y keeps f32', async () => {
    const g = await f16Gpu('f16 modulate / gated');
    if (!g) return;
    for (const [L, C] of SIZES) {
      const B = 2;
      const x = g.upload(randn(B * L * C, L + C, 4), [B, L, C]);
      const sh = randn(B * C, 9), sc = randn(B * C, 10);
      const shift = g.upload(sh, [B, C]), scale = g.upload(sc, [B, C]);
      const xm = withActivations(g, 'f16', () => layerNormModulate(x, shift, scale, 1e-6, true));
      const xh = await g.readF32(x);
      await expectF16(`layerNormModulate [${B}, ${L}, ${C}]`, xm, nref.modulate(nref.layerNorm(xh, C, null, null, 1e-6), B, L, C, sh, sc), 2 ** -11 * 1.001);
      const y = uploadAs(g, randn(B * L * C, 11, 5), [B, L, C], 'f16');
      const r = withActivations(g, 'f16', () => gatedResidual(x, scale, y.t));
      expect(r.dtype).toBe('f32');
      expectClose(`gatedResidual f16 y [${B}, ${L}, ${C}]`, await g.readF32(r), nref.gatedResidual(xh, B, L, C, sc, y.exact), 1e-5, 1e-6);
      for (const t of [x, shift, scale, xm, y.t, r]) t.dispose();
    }
  });
  test('a norm output beyond 65504 is clamped and counted', async () => {
    const g = await f16Gpu('f16 norm overflow');
    if (!g) return;
    const x = g.upload(randn(3 * 17, 3), [3, 17]);
    const w = g.upload(new Float32Array(17).fill(1e6), [17]);
    const before = await f16Overflows(g);
    const o = withActivations(g, 'f16', () => rmsNorm(x, w));
    const got = await g.readF32(o);
    expect(await f16Overflows(g)).toBeGreaterThan(before);
    expect(got.every((v) => Number.isFinite(v) && Math.abs(v) <= 65504)).toBe(true);
    for (const t of [x, w, o]) t.dispose();
  });
});

describe('rope, layout and attention with f16 storage', () => {
  test('QK-norm + RoPE (qk-norm-rope.wgsl X16 / O16): f16 x into rows of an f16 joint, and into a new f16 tensor', async () => {
    const g = await f16Gpu('f16 qk-norm-rope');
    if (!g) return;
    // B, Ls, heads, Dh, Lt, at: odd token counts, Dh past the 64-lane loop, rows not on 256-byte boundaries
    for (const [B, Ls, H, Dh, Lt, at] of [[1, 1, 1, 2, 1, 0], [2, 3, 17, 12, 7, 4], [2, 17, 3, 130, 20, 3], [1, 255, 1, 10, 258, 3]]) {
      const x = uploadAs(g, randn(B * Ls * H * Dh, Dh + Ls, 3), [B, Ls, H, Dh], 'f16');
      const wv = randn(Dh, Dh + 1), pe = randn(Lt * Dh * 2, Lt + 7);
      const w = g.upload(wv, [Dh]), pt = g.upload(pe, [1, Lt, Dh / 2, 2, 2]);
      const joint = uploadAs(g, new Float32Array(B * Lt * H * Dh).fill(7.25), [B, Lt, H, Dh], 'f16');
      const rowsPe = pe.subarray(at * 2 * Dh, (at + Ls) * 2 * Dh);
      const r = ropeFluxRef(nref.rmsNorm(x.exact, Dh, wv, 1e-6), rowsPe, B, Ls, H, Dh, 1);
      const want = new Float64Array(B * Lt * H * Dh).fill(7.25), W = H * Dh;
      for (let b = 0; b < B; b++) want.set(r.subarray(b * Ls * W, (b + 1) * Ls * W), (b * Lt + at) * W);
      expect(rmsNormRope(x.t, w, pt, 1e-6, { out: joint.t, at })).toBe(joint.t);
      await expectF16(`rmsNormRope into f16 joint B=${B} Ls=${Ls} H=${H} Dh=${Dh} at=${at}`, joint.t, want, 2 ** -11 * 1.001);
      const ptS = g.upload(rowsPe.slice(), [1, Ls, Dh / 2, 2, 2]);
      const o = withActivations(g, 'f16', () => rmsNormRope(x.t, w, ptS, 1e-6));
      await expectF16(`rmsNormRope new f16 B=${B} Ls=${Ls} H=${H} Dh=${Dh}`, o, r, 2 ** -11 * 1.001);
      for (const t of [x.t, w, pt, ptS, joint.t, o]) t.dispose();
    }
  });

  test('FLUX rope f16 in / out', async () => {
    const g = await f16Gpu('f16 rope');
    if (!g) return;
    for (const [L, H] of [[1, 1], [3, 17], [17, 3]]) {
      const B = 2, Dh = 6;
      const x = uploadAs(g, randn(B * L * H * Dh, L * H), [B, L, H, Dh], 'f16');
      const pe = randn(L * (Dh / 2) * 4, L + 5);
      const pt = g.upload(pe, [1, L, Dh / 2, 2, 2]);
      const o = withActivations(g, 'f16', () => applyRopeFlux(x.t, pt));
      const want = ropeFluxRef(x.exact, pe, B, L, H, Dh, 1);
      // two products and a sum in f32 before the f16 rounding
      const got = await g.readF32(o);
      expect(o.dtype).toBe('f16');
      expectClose(`rope f16 B=${B} L=${L} H=${H}`, got, want, 1e-6, 2 ** -11 * 1.001);
      for (const t of [x.t, pt, o]) t.dispose();
    }
  });
  test('concat / slice of f16 tensors (exact), odd and even extents', async () => {
    const g = await f16Gpu('f16 layout');
    if (!g) return;
    for (const [a, b, C] of [[1, 3, 17], [17, 255, 3], [3, 1, 1], [4, 6, 8]]) {
      const x = uploadAs(g, randn(2 * a * C, a), [2, a, C], 'f16'), y = uploadAs(g, randn(2 * b * C, b), [2, b, C], 'f16');
      const c1 = concat([x.t, y.t], 1);
      expect(c1.dtype).toBe('f16');
      const want = lref.concat([{ data: x.exact, shape: [2, a, C] }, { data: y.exact, shape: [2, b, C] }], 1);
      expectClose(`concat f16 a=${a} b=${b} C=${C}`, await g.readF32(c1), want, 0);
      const s = slice(c1, 2, 1 % C, C - (1 % C));
      expectClose(`slice f16 a=${a} b=${b} C=${C}`, await g.readF32(s), lref.slice(want, [2, a + b, C], 2, 1 % C, C - (1 % C)), 0);
      for (const t of [x.t, y.t, c1, s]) t.dispose();
    }
  });
  test('subgroup-matrix attention, f16 q/k/v and out', async () => {
    const g = await f16Gpu('f16 attention');
    if (!g) return;
    for (const [L, Lk, Dh] of [[1, 3, 16], [17, 255, 64], [255, 17, 24]]) {
      const B = 2, H = 3, Hkv = 3;
      const up = (n: number, s: number, shape: number[]) => uploadAs(g, randn(n, s), shape, 'f16');
      const q = up(B * L * H * Dh, L, [B, L, H, Dh]), k = up(B * Lk * Hkv * Dh, Lk, [B, Lk, Hkv, Dh]), v = up(B * Lk * Hkv * Dh, Lk + 1, [B, Lk, Hkv, Dh]);
      const ran = g.fileCounts.get('attention-sgmat.wgsl') ?? 0;
      const o = withActivations(g, 'f16', () => attention(q.t, k.t, v.t, { kernel: 'subgroup-matrix' }));
      expect(g.fileCounts.get('attention-sgmat.wgsl') ?? 0).toBeGreaterThan(ran);
      expect(o.dtype).toBe('f16');
      const want = attentionRef(q.exact, k.exact, v.exact, B, L, Lk, H, Hkv, Dh);
      const delta = (1 / Math.sqrt(Dh)) * 2 ** -10 * Dh;
      // the f16-operand bound of kernels-test/attention-sgmat.test.ts plus the output's rounding (|o| <= max|v| <= 1)
      expectClose(`attention f16 L=${L} Lk=${Lk} Dh=${Dh}`, await g.readF32(o), want, 2 ** -10 + 2.2 * delta + 2e-5 + 2 ** -11, 0);
      for (const t of [q.t, k.t, v.t, o]) t.dispose();
    }
  });
});

import { getGpu, releaseGpu, randn, expectClose, uploadAs, poison, primePoison, withBindingLimit } from './harness.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType } from '../src/runtime/tensor.js';
import * as ref from './ref/norm.js';
import { layerNorm, layerNormModulate, rmsNorm, softmax, modulate, gatedResidual, swiglu } from '../src/ops/norm.js';

afterAll(releaseGpu);

// f32 reductions over up to 5120 elements with inputs ~5 ± 3: observed max error ~1e-6; the bound leaves headroom.
const NORM_ATOL = 3e-5, NORM_RTOL = 1e-5;

describe('layerNorm / rmsNorm', () => {
  const cases: [rows: number, C: number, wdt: DType | null][] = [
    [5, 1, null], [4, 3, 'f32'], [7, 17, 'bf16'], [3, 255, 'f32'], [2, 5120, 'bf16'], [33, 64, null], [3, 3072, 'f16'],
  ];
  for (const [rows, C, wdt] of cases) {
    test(`rows=${rows} C=${C} w=${wdt ?? 'none'}`, async () => {
      const g = await getGpu();
      const x = randn(rows * C, rows * 1000 + C, 3).map((v) => v + 5); // offset: a one-pass E[x²]-E[x]² would lose digits
      const xt = g.upload(x, [rows, C]);
      const wRaw = randn(C, C + 1, 1).map((v) => v + 1), bRaw = randn(C, C + 2, 0.5);
      const w = wdt ? uploadAs(g, wRaw, [C], wdt) : null;
      const b = wdt ? uploadAs(g, bRaw, [C], wdt) : null;
      primePoison(g, [rows, C]);
      const y = layerNorm(xt, w?.t, b?.t, 1e-6);
      expectClose(`layerNorm rows=${rows} C=${C}`, await g.readF32(y), ref.layerNorm(x, C, w?.exact ?? null, b?.exact ?? null, 1e-6), NORM_ATOL, NORM_RTOL);
      const wr = w ?? uploadAs(g, wRaw, [C], 'f32');
      primePoison(g, [rows, C]);
      const r = rmsNorm(xt, wr.t, 1e-6);
      expectClose(`rmsNorm rows=${rows} C=${C}`, await g.readF32(r), ref.rmsNorm(x, C, wr.exact, 1e-6), NORM_ATOL, NORM_RTOL);
      for (const t of [xt, y, r, wr.t, w?.t, b?.t]) t?.dispose();
    });
  }

  test('layerNorm w only, eps=1e-5, rank-3 x', async () => {
    const g = await getGpu();
    const x = randn(2 * 5 * 17, 11, 2);
    const w = randn(17, 12);
    const xt = g.upload(x, [2, 5, 17]), wt = g.upload(w, [17]);
    const y = layerNorm(xt, wt, undefined, 1e-5);
    expect(y.shape).toEqual([2, 5, 17]);
    expectClose('layerNorm w-only', await g.readF32(y), ref.layerNorm(x, 17, w, null, 1e-5), NORM_ATOL, NORM_RTOL);
    expect(() => layerNorm(xt, g.upload(w.subarray(0, 16), [16]))).toThrow(/w \[16\] must be \[17\]/);
  });

  test('rows > 65535 (folded grid)', async () => {
    const g = await getGpu();
    const rows = 66000, C = 3;
    const x = randn(rows * C, 5, 2);
    const w = randn(C, 6);
    const xt = g.upload(x, [rows, C]), wt = g.upload(w, [C]);
    primePoison(g, [rows, C]);
    expectClose('rmsNorm 66000 rows', await g.readF32(rmsNorm(xt, wt)), ref.rmsNorm(x, C, w, 1e-6), NORM_ATOL, NORM_RTOL);
  });

  test('split along rows over maxBindingBytes', async () => {
    const g = await getGpu();
    // 68-byte rows, 120 fit: chunks of 120 rows at a 16- or 32-byte binding alignment, of 64 at 256
    const rows = 200, C = 17;
    const x = randn(rows * C, 7, 3).map((v) => v - 2);
    const w = uploadAs(g, randn(C, 8), [C], 'bf16'), b = uploadAs(g, randn(C, 9), [C], 'f32');
    const xt = g.upload(x, [rows, C]);
    await withBindingLimit(g, 8192, async () => {
      const d0 = g.dispatchCount;
      primePoison(g, [rows, C]);
      const y = layerNorm(xt, w.t, b.t);
      expect(g.dispatchCount - d0).toBe(g.storageAlign === 256 ? 4 : 2);
      expectClose('layerNorm split', await g.readF32(y), ref.layerNorm(x, C, w.exact, b.exact, 1e-6), NORM_ATOL, NORM_RTOL);
      const s = softmax(xt);
      expectClose('softmax split', await g.readF32(s), ref.softmax(x, C), 1e-7, 1e-5);
    });
  });
});

describe('layerNormModulate (fused and two-kernel)', () => {
  // f64 reference: modulate(layerNorm(x)). The normalised value carries NORM_ATOL / NORM_RTOL; (1 + scale)
  // scales its error, so the bound is NORM_ATOL * max|1 + scale| (+ NORM_RTOL relative).
  const cases: [B: number, L: number, C: number][] = [[1, 1, 1], [1, 3, 3], [2, 17, 17], [2, 3, 255], [3, 5, 1000], [1, 2, 3072]];
  for (const [B, L, C] of cases) {
    test(`B=${B} L=${L} C=${C}`, async () => {
      const g = await getGpu();
      const x = randn(B * L * C, B * 100 + L * 10 + C, 3).map((v) => v + 5);
      const sh = randn(B * C, C + 3), sc = randn(B * C, C + 4);
      const xt = g.upload(x, [B, L, C]), sht = g.upload(sh, [B, C]), sct = g.upload(sc, [B, 1, C]);
      const want = ref.modulate(ref.layerNorm(x, C, null, null, 1e-6), B, L, C, sh, sc);
      const atol = NORM_ATOL * Math.max(...Array.from(sc, (v) => Math.abs(1 + v)));
      for (const fused of [true, false]) {
        primePoison(g, [B, L, C]);
        const d0 = g.dispatchCount;
        const y = layerNormModulate(xt, sht, sct, 1e-6, fused);
        expect(g.dispatchCount - d0).toBe(fused ? 1 : 2);
        expectClose(`layerNormModulate fused=${fused} ${B}x${L}x${C}`, await g.readF32(y), want, atol, NORM_RTOL);
        y.dispose();
      }
      for (const t of [xt, sht, sct]) t.dispose();
    });
  }

  test('split along rows: chunks cross the batch boundary (row0 picks the batch row of shift/scale)', async () => {
    const g = await getGpu();
    // 150 rows of 68 bytes: chunks of 120 rows (64 at a 256-byte alignment) that cross batch rows
    const B = 3, L = 50, C = 17;
    const x = randn(B * L * C, 21, 2), sh = randn(B * C, 22), sc = randn(B * C, 23);
    const xt = g.upload(x, [B, L, C]), sht = g.upload(sh, [B, C]), sct = g.upload(sc, [B, C]);
    const want = ref.modulate(ref.layerNorm(x, C, null, null, 1e-6), B, L, C, sh, sc);
    await withBindingLimit(g, 8192, async () => {
      const d0 = g.dispatchCount;
      primePoison(g, [B, L, C]);
      const y = layerNormModulate(xt, sht, sct, 1e-6, true);
      expect(g.dispatchCount - d0).toBe(g.storageAlign === 256 ? 3 : 2);
      expectClose('layerNormModulate split', await g.readF32(y), want, NORM_ATOL * 6, NORM_RTOL);
    });
    expect(() => layerNormModulate(xt, g.upload(sh.subarray(0, C), [1, C]), sct)).toThrow(/shift \[1,17\] must be \[3, 17\]/);
  });
});

describe('softmax', () => {
  for (const [rows, C] of [[3, 1], [2, 3], [5, 17], [4, 255], [2, 5120]] as const) {
    test(`rows=${rows} C=${C}`, async () => {
      const g = await getGpu();
      const x = randn(rows * C, rows + 31 * C, 30); // |x| up to 30: exp overflows without the max subtraction... in f16, not f32; large spread still tests it
      x[0] = 90; // exp(90) overflows f32: only a max-subtracted softmax survives
      const xt = g.upload(x, [rows, C]);
      primePoison(g, [rows, C]);
      expectClose(`softmax C=${C}`, await g.readF32(softmax(xt)), ref.softmax(x, C), 1e-7, 2e-5);
    });
  }
});

describe('modulate / gatedResidual / swiglu', () => {
  for (const [B, L, C] of [[1, 1, 1], [2, 17, 3], [2, 5, 255], [3, 40, 17]] as const) {
    test(`B=${B} L=${L} C=${C}`, async () => {
      const g = await getGpu();
      const n = B * L * C;
      const x = randn(n, n, 2), y = randn(n, n + 1, 2);
      const sh = randn(B * C, 3), sc = randn(B * C, 4), gt = randn(B * C, 5);
      const [xt, yt] = [g.upload(x, [B, L, C]), g.upload(y, [B, L, C])];
      const [sht, sct, gtt] = [g.upload(sh, [B, C]), g.upload(sc, [B, 1, C]), g.upload(gt, [B, C])];
      const run = async (tag: string) => {
        primePoison(g, [B, L, C]);
        expectClose(`modulate ${tag}`, await g.readF32(modulate(xt, sht, sct)), ref.modulate(x, B, L, C, sh, sc), 1e-6, 1e-6);
        primePoison(g, [B, L, C]);
        expectClose(`gated ${tag}`, await g.readF32(gatedResidual(xt, gtt, yt)), ref.gatedResidual(x, B, L, C, gt, y), 1e-6, 1e-6);
        primePoison(g, [B, L, C]);
        expectClose(`swiglu ${tag}`, await g.readF32(swiglu(xt, yt)), ref.swiglu(x, y), 1e-6, 2e-6);
      };
      await run('whole');
      // 3x40x17: 120 rows of 68 bytes -> chunks of 64 rows that cross the batch boundary at row 40
      if (n * 4 > 8192 && C * 4 * 64 <= 8192) await withBindingLimit(g, 8192, () => run('split'));
    });
  }
  test('shape errors', async () => {
    const g = await getGpu();
    const x = g.upload(randn(24, 1), [2, 4, 3]);
    expect(() => modulate(x, g.upload(randn(3, 1), [1, 3]), g.upload(randn(6, 1), [2, 3]))).toThrow(/shift \[1,3\] must be \[2, 3\]/);
    expect(() => gatedResidual(x, g.upload(randn(6, 1), [2, 3]), g.upload(randn(6, 1), [2, 3]))).toThrow(/same shape/);
    expect(() => swiglu(x, g.upload(randn(6, 1), [2, 3]))).toThrow(/same shape/);
  });
});

/**
 * GEMM family vs the f64 reference (kernels-test/ref/gemm.ts): every entry (gemv, tiled, naive) at odd
 * shapes, each weight dtype (reference uses the exact widened weights), bias dtypes, fused activations,
 * batched leading dims, the N/M split paths (bit-identical to the unsplit result) and matmul.
 * Outputs are written into NaN-poisoned tensors (opts.out) so skipped elements fail.
 * Where the device's plan picks the subgroup-matrix kernel (STEP1X_KERNELS=subgroup-matrix in the trixie
 * root) the 'auto' cases run it, with its dispatch counted, under the f16-operand bound of ref.f16Bound.
 */
import { getGpu, releaseGpu, randn, uploadAs, poison, expectClose, expectWithin } from './harness.js';
import { planGemm } from '../src/ops/plan-gemm.js';
import * as ref from './ref/gemm.js';
import { linear, matmul, type Activation, type GemmVariant, type TileConfig } from '../src/ops/linear.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

/** f32 accumulation over K terms of |x*w| <= 1: error grows ~ K * eps in the worst case. */
const tolFor = (K: number, act?: Activation): number => 2e-6 + 1e-7 * K + (act === 'gelu_erf' ? 2e-7 : 0);

interface Case {
  M: number;
  K: number;
  N: number;
  wdt?: DType;
  bdt?: DType | null;
  act?: Activation;
  variant?: GemmVariant;
  tile?: TileConfig;
  lead?: number[]; // leading dims of x (product = M); default [M]
  seed?: number;
}

async function runCase(g: Gpu, c: Case): Promise<Float32Array> {
  const { M, K, N, wdt = 'f32', bdt = null, act, variant = 'auto', tile, seed = 1 } = c;
  const lead = c.lead ?? [M];
  const x = randn(M * K, seed * 7 + 1);
  const w = uploadAs(g, randn(N * K, seed * 7 + 2), [N, K], wdt);
  const b = bdt ? uploadAs(g, randn(N, seed * 7 + 3), [N], bdt) : null;
  const xt = g.upload(x, [...lead, K]);
  const out = g.empty([...lead, N]);
  poison(g, out);
  const planned = planGemm(g, { M, N, K, wdt }, variant);
  const ran = planned ? g.fileCounts.get(planned.file) ?? 0 : 0;
  const ret = linear(xt, w.t, b?.t, { act, variant, out, tile });
  expect(ret).toBe(out);
  if (planned) expect(g.fileCounts.get(planned.file)).toBeGreaterThan(ran);
  const got = await g.readF32(out);
  const want = ref.linear(x, w.exact, M, N, K, b?.exact, act);
  const name = `linear M=${M} K=${K} N=${N} w=${wdt} b=${bdt} act=${act} variant=${variant} lead=[${lead}]`;
  if (planned?.kind === 'subgroup-matrix') expectWithin(`${name} (subgroup-matrix, f16 bound)`, got, want, ref.f16Bound(x, w.exact, M, N, K, act));
  else expectClose(name, got, want, tolFor(K, act), 1e-6);
  for (const t of [xt, w.t, b?.t, out]) t?.dispose();
  return got;
}

const MS = [1, 2, 3, 4, 5, 17, 255];
const KS = [1, 3, 17, 64, 255];
const NS = [1, 3, 17, 255];

describe('linear shapes (f32 weights)', () => {
  for (const M of MS)
    test(`M=${M}, all K x N, auto + naive`, async () => {
      const g = await getGpu();
      for (const K of KS)
        for (const N of NS) {
          await runCase(g, { M, K, N, seed: M * 1000 + K * 10 + N });
          // The naive oracle over the biggest shapes costs seconds on lavapipe: sample it.
          if (M * N * K <= 17 * 255 * 64) await runCase(g, { M, K, N, variant: 'naive', seed: M + K + N });
        }
    });
  test('tiled entry forced at M <= 4 and gemv at M = 4', async () => {
    const g = await getGpu();
    for (const M of [1, 3, 4]) for (const K of [3, 64]) await runCase(g, { M, K, N: 17, variant: 'tiled' });
    await runCase(g, { M: 4, K: 255, N: 255, variant: 'gemv' });
    // gemv splits K over 64 lanes: K > 256 gives every lane several quads (aligned) / elements (odd K)
    await runCase(g, { M: 3, K: 1000, N: 9, wdt: 'bf16' });
    await runCase(g, { M: 2, K: 1001, N: 9, wdt: 'bf16' });
  });
  test('grid folded past maxWorkgroupsPerDim (1x1 tile: 300*301 workgroups)', async () => {
    const g = await getGpu();
    expect(300 * 301).toBeGreaterThan(g.maxWorkgroupsPerDim);
    await runCase(g, { M: 300, K: 3, N: 301, variant: 'tiled', tile: { tm: 1, tn: 1, wgm: 1, wgn: 1 } });
  });
});

/*
 * Pipeline compilation dominates on lavapipe (an 8x4-tiled pipeline takes ~3-5 s to JIT, a 2x3 one ~1 s),
 * so the dtype x bias x activation matrix runs the tiled entry with a small odd 2-D geometry (same
 * macros and loads, fewer unrolled copies) and the default geometry only on the production combinations.
 */
const SMALL: TileConfig = { tm: 2, tn: 3, wgm: 2, wgn: 8 };

describe('linear dtypes, bias, activations', () => {
  // (M, K): gemv/tiled x aligned (K % 4 == 0) / unaligned
  const SHAPES: [number, number][] = [[3, 17], [3, 64], [17, 17], [17, 64]];
  // Bias dtype rotates with the shape (offset by the weight dtype), so every (shape, bias) pair is
  // covered once across the three weight dtypes without compiling all 36 combinations.
  const BIAS = [null, 'f32', 'bf16'] as const;
  (['f32', 'f16', 'bf16'] as const).forEach((wdt, wi) =>
    test(`weights ${wdt}, bias none/f32/bf16 (small tile)`, async () => {
      const g = await getGpu();
      for (const [si, [M, K]] of SHAPES.entries()) await runCase(g, { M, K, N: 19, wdt, bdt: BIAS[(si + wi) % 3], tile: SMALL });
      await runCase(g, { M: 5, K: 21, N: 7, wdt, bdt: 'f32', variant: 'naive' });
      await runCase(g, { M: 5, K: 20, N: 7, wdt, bdt: 'bf16', variant: 'naive' });
    }),
  );
  (['silu', 'gelu_tanh', 'gelu_erf'] as const).forEach((act, ai) =>
    test(`fused ${act} (small tile)`, async () => {
      const g = await getGpu();
      // two of the four shapes per activation (gemv + tiled, alternating alignment)
      for (const [M, K] of [SHAPES[ai % 2], SHAPES[2 + ((ai + 1) % 2)]])
        await runCase(g, { M, K, N: 19, wdt: 'bf16', bdt: 'f32', act, tile: SMALL });
      await runCase(g, { M: 6, K: 8, N: 5, wdt: 'f32', bdt: 'f32', act, variant: 'naive' });
    }),
  );
  test('default tile: bf16/f16 weights, bias, gelu_tanh (the DiT / Qwen paths)', async () => {
    const g = await getGpu();
    await runCase(g, { M: 37, K: 64, N: 45, wdt: 'bf16' });
    await runCase(g, { M: 37, K: 64, N: 45, wdt: 'bf16', bdt: 'bf16' });
    await runCase(g, { M: 37, K: 64, N: 45, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' });
    await runCase(g, { M: 29, K: 33, N: 31, wdt: 'f16' });
  });
  test('batched leading dims [2, 3, 5, K] and [1, 1, K]', async () => {
    const g = await getGpu();
    await runCase(g, { M: 30, K: 24, N: 13, lead: [2, 3, 5], wdt: 'bf16', bdt: 'f32', act: 'silu', tile: SMALL });
    await runCase(g, { M: 1, K: 24, N: 13, lead: [1, 1], wdt: 'f16' });
  });
  test('argument errors name the shapes', async () => {
    const g = await getGpu();
    const x = g.upload(randn(12, 1), [3, 4]);
    const w = g.upload(randn(10, 2), [2, 5]);
    expect(() => linear(x, w)).toThrow(/x \[3,4\] last dim must equal w \[2,5\]/);
    const w2 = g.upload(randn(8, 2), [2, 4]);
    expect(() => linear(x, w2, g.upload(randn(3, 3), [3]))).toThrow(/bias \[3\] must be \[2\]/);
    expect(() => linear(g.upload(randn(20, 1), [5, 4]), w2, undefined, { variant: 'gemv' })).toThrow(/gemv/);
  });
});

describe('linear split paths (maxBindingBytes lowered)', () => {
  const SPLITS: Case[] = [
    { M: 37, K: 64, N: 45, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' }, // aligned, weights + tokens split
    { M: 37, K: 17, N: 45, wdt: 'f32', bdt: 'f32', tile: SMALL }, // unaligned K, f32 weights
    { M: 29, K: 33, N: 31, wdt: 'f16' }, // odd K with packed weights: rows start mid-word
    { M: 3, K: 64, N: 200, wdt: 'bf16', bdt: 'f32' }, // gemv: column blocks (and rows at 1024)
  ];
  for (const c of SPLITS)
    for (const limit of [1024, 2048])
      test(`M=${c.M} K=${c.K} N=${c.N} w=${c.wdt} limit=${limit}`, async () => {
        const g = await getGpu();
        const full = await runCase(g, c);
        const saved = g.maxBindingBytes;
        const before = g.dispatchCount;
        g.maxBindingBytes = limit;
        let split: Float32Array;
        try {
          split = await runCase(g, c);
        } finally {
          g.maxBindingBytes = saved;
        }
        expect(g.dispatchCount - before).toBeGreaterThan(1);
        expectClose('split vs unsplit (bit-identical)', split, full, 0);
      });
  test('x and w as row views at unaligned byte offsets, unsplit and split', async () => {
    const g = await getGpu();
    const [M, K, N] = [23, 20, 13];
    const xb = randn((M + 5) * K, 21), wb = randn((N + 3) * K, 22), bias = randn(N, 23);
    const xbig = g.upload(xb, [M + 5, K]);
    const wbig = uploadAs(g, wb, [N + 3, K], 'bf16');
    const bt = g.upload(bias, [N]);
    const x = xbig.rows(3, M); // byteOffset 240
    const w = wbig.t.rows(1, N); // byteOffset 40
    const want = ref.linear(xb.subarray(3 * K), wbig.exact.subarray(K), M, N, K, bias, 'silu');
    const saved = g.maxBindingBytes;
    try {
      for (const limit of [saved, 1024]) {
        g.maxBindingBytes = limit;
        const out = g.empty([M, N]);
        poison(g, out);
        linear(x, w, bt, { act: 'silu', out, tile: SMALL });
        const got = await g.readF32(out);
        if (planGemm(g, { M, N, K, wdt: 'bf16' })?.kind === 'subgroup-matrix')
          expectWithin(`views limit=${limit} (subgroup-matrix, f16 bound)`, got, want, ref.f16Bound(xb.subarray(3 * K), wbig.exact.subarray(K), M, N, K, 'silu'));
        else expectClose(`views limit=${limit}`, got, want, tolFor(K), 1e-6);
        out.dispose();
      }
    } finally {
      g.maxBindingBytes = saved;
    }
  });
  test('a single weight row over the limit is a clear error', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    const x = g.upload(randn(2 * 300, 1), [2, 300]);
    const w = g.upload(randn(300 * 2, 2), [2, 300]);
    g.maxBindingBytes = 512;
    try {
      expect(() => linear(x, w)).toThrow(/does not fit the binding limit 512/);
    } finally {
      g.maxBindingBytes = saved;
    }
  });
});

describe('matmul', () => {
  const CASES: [number, number, number, number, boolean, boolean][] = [
    // B, M, K, N, rank-3 a, batched b
    [1, 1, 1, 1, false, false],
    [1, 17, 3, 255, false, false],
    [3, 5, 17, 19, true, true],
    [2, 255, 64, 3, true, false],
  ];
  for (const [B, M, K, N, a3, bb] of CASES)
    test(`B=${B} M=${M} K=${K} N=${N}${bb ? ' batched b' : ''}`, async () => {
      const g = await getGpu();
      const a = randn(B * M * K, 11), b = randn((bb ? B : 1) * K * N, 12);
      const at = g.upload(a, a3 ? [B, M, K] : [M, K]);
      const bt = g.upload(b, bb ? [B, K, N] : [K, N]);
      const o = matmul(at, bt);
      expect(o.shape).toEqual(a3 ? [B, M, N] : [M, N]);
      expectClose(`matmul B=${B} M=${M} K=${K} N=${N}`, await g.readF32(o), ref.matmul(a, b, B, M, K, N, bb), tolFor(K), 1e-6);
    });
  test('shape mismatch error', async () => {
    const g = await getGpu();
    expect(() => matmul(g.upload(randn(6, 1), [2, 3]), g.upload(randn(8, 1), [4, 2]))).toThrow(/a \[2,3\] and b \[4,2\] do not match/);
  });
});

/**
 * The planned GEMM variants (src/ops/plan-gemm.ts) vs the f64 reference (kernels-test/ref/gemm.ts):
 *   subgroup-matrix (shaders/gemm-sgmat.wgsl, f16 operands): on an adapter with
 *     chromium-experimental-subgroup-matrix (the trixie root, scripts/sgmat-env.sh); elsewhere each test
 *     says so and returns: the CI guard (.ci/run) fails when no subgroup-matrix dispatch happened there.
 *   workgroup (shaders/gemm-wg.wgsl, f32): on every adapter.
 * Odd shapes (1, 3, 17, 255: non-multiples of every tile), all weight dtypes, bias, fused activations,
 * split paths (bit-identical to unsplit), injected values beyond the f16 range (f32 recompute, no inf).
 *
 * f16-operand tolerance, per element: rounding x and w to f16 (unit roundoff 2^-11 each) perturbs
 * each product by at most 2^-10 |x w|, f16 subnormals (|v| < 2^-14) lose up to 2^-25 absolute, and
 * the f32 accumulation adds K 2^-24 sum|x w|:
 *   |err| <= (2^-10 + K 2^-23) sum_k |x_k w_k| + 2^-24 sum_k |x_k| + 1e-6, times 1.2 through an activation.
 */
import { getGpu, releaseGpu, randn, uploadAs, poison, expectClose, expectWithin } from './harness.js';
import * as ref from './ref/gemm.js';
import { linear, type Activation, type GemmVariant } from '../src/ops/linear.js';
import { overflowCount, groupRows, GROUP_M, sgmatPlan, setTunedTiles, sgmatFits, gemmConfig, DEFAULT_SGMAT_TILE, type SgmatTile } from '../src/ops/plan-gemm.js';
import type { Kernel } from '../src/runtime/gpu.js';
import { L2_REUSE_BYTES } from '../src/runtime/dryrun/traffic.js';
import { hasMatrixUnits } from '../src/runtime/caps.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const f32Tol = (K: number, act?: Activation): number => 2e-6 + 1e-7 * K + (act === 'gelu_erf' ? 2e-7 : 0);

/** chunk: the f16→f16 path's k-chunk (f16ResultBound); unset: the f16→f32 bound. */
interface Case { M: number; K: number; N: number; wdt?: DType; bdt?: DType | null; act?: Activation; seed?: number; scaleX?: number; chunk?: number }

async function runCase(g: Gpu, variant: GemmVariant, c: Case, inject?: (x: Float32Array, w: Float32Array) => void): Promise<Float32Array> {
  const { M, K, N, wdt = 'f32', bdt = null, act, seed = 1 } = c;
  const x = randn(M * K, seed * 7 + 1, c.scaleX ?? 1);
  const w0 = randn(N * K, seed * 7 + 2);
  inject?.(x, w0);
  const w = uploadAs(g, w0, [N, K], wdt);
  const b = bdt ? uploadAs(g, randn(N, seed * 7 + 3), [N], bdt) : null;
  const xt = g.upload(x, [M, K]);
  const out = g.empty([M, N]);
  poison(g, out);
  const file = variant === 'subgroup-matrix' ? 'gemm-sgmat.wgsl' : 'gemm-wg.wgsl';
  const ran = g.fileCounts.get(file) ?? 0;
  linear(xt, w.t, b?.t, { act, variant, out });
  expect(g.fileCounts.get(file) ?? 0).toBeGreaterThan(ran);
  const got = await g.readF32(out);
  const want = ref.linear(x, w.exact, M, N, K, b?.exact, act);
  const name = `${variant} M=${M} K=${K} N=${N} w=${wdt} b=${bdt} act=${act}`;
  if (variant === 'subgroup-matrix' && !inject)
    expectWithin(name, got, want, c.chunk ? ref.f16ResultBound(x, w.exact, M, N, K, c.chunk, act) : ref.f16Bound(x, w.exact, M, N, K, act));
  else expectClose(name, got, want, f32Tol(K, act) * (c.scaleX ?? 1), 1e-6);
  for (const t of [xt, w.t, b?.t, out]) t?.dispose();
  return got;
}

const SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 255, 17], [3, 17, 255], [17, 3, 3], [17, 64, 17], [255, 17, 3], [255, 255, 255], [33, 100, 65],
];

async function sgmatGpu(): Promise<Gpu | null> {
  const g = await getGpu();
  if (hasMatrixUnits(g.caps) && g.hasFeature('chromium-experimental-subgroup-matrix')) return g;
  console.log(`gemm-plan: subgroup-matrix cases not run here: adapter "${g.caps.description}" has no subgroup-matrix feature in use (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

describe('subgroup-matrix GEMM (f16 operands, f32 accumulate)', () => {
  test('odd shapes, f32 weights', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    for (const [M, K, N] of SHAPES) await runCase(g, 'subgroup-matrix', { M, K, N, seed: M + K + N });
  });
  test('bf16 / f16 weights, bias dtypes, activations', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    await runCase(g, 'subgroup-matrix', { M: 17, K: 65, N: 19, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' });
    await runCase(g, 'subgroup-matrix', { M: 37, K: 33, N: 31, wdt: 'f16', bdt: 'bf16', act: 'silu' });
    await runCase(g, 'subgroup-matrix', { M: 5, K: 40, N: 70, wdt: 'bf16', bdt: 'bf16', act: 'gelu_erf' });
    await runCase(g, 'subgroup-matrix', { M: 255, K: 64, N: 45, wdt: 'bf16' });
  });
  test('non-default tiles (every geometry parameter odd against the shape)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const { sgmatFits, matrixConfig } = await import('../src/ops/plan-gemm.js');
    const cfg = matrixConfig(g.caps);
    for (const t of [{ sgm: 1, sgn: 1, pm: 1, pn: 1, bk: cfg.K }, { sgm: 1, sgn: 2, pm: 3, pn: 1, bk: 2 * cfg.K }, { ...DEFAULT_SGMAT_TILE, pm: 4, pn: 2 }]) {
      if (!sgmatFits(g.caps, cfg, t)) continue;
      const { setTunedTiles } = await import('../src/ops/plan-gemm.js');
      setTunedTiles(g, { lookup: (k) => (k === 'subgroup-matrix' ? t : undefined) });
      try {
        expect(sgmatPlan(g.caps, t).bm).toBe(t.sgm * t.pm * cfg.M);
        await runCase(g, 'subgroup-matrix', { M: 29, K: 43, N: 53, wdt: 'bf16', bdt: 'f32' });
      } finally {
        setTunedTiles(g, undefined);
      }
    }
  });
  test('split paths are bit-identical to the unsplit result', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const c: Case = { M: 37, K: 64, N: 45, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' };
    const full = await runCase(g, 'subgroup-matrix', c);
    const saved = g.maxBindingBytes;
    g.maxBindingBytes = 1024;
    try {
      expectClose('split vs unsplit', await runCase(g, 'subgroup-matrix', c), full, 0);
    } finally {
      g.maxBindingBytes = saved;
    }
  });
  test('activations and weights beyond 65504 are recomputed in f32 (no inf/NaN)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const before = await overflowCount(g);
    // x: one activation of 1e5 in row 5 (the Qwen-style outlier); f32 reference tolerance scaled by it.
    const got = await runCase(g, 'subgroup-matrix', { M: 17, K: 40, N: 19, bdt: 'f32', scaleX: 1 }, (x) => { x[5 * 40 + 3] = 1e5; });
    expect(got.every(Number.isFinite)).toBe(true);
    const mid = await overflowCount(g);
    expect(mid).toBeGreaterThan(before);
    // w: one f32 weight of 7e4 (outside f16) → that tile also takes the f32 path.
    const got2 = await runCase(g, 'subgroup-matrix', { M: 9, K: 24, N: 11 }, (_x, w) => { w[2 * 24 + 1] = 7e4; });
    expect(got2.every(Number.isFinite)).toBe(true);
    expect(await overflowCount(g)).toBeGreaterThan(mid);
  });
});

/** Run `body` with tile t forced on g, recording the defines of every gemm-sgmat dispatch. */
async function withTile(g: Gpu, t: SgmatTile, body: () => Promise<void>): Promise<Kernel['defines'][]> {
  const seen: Kernel['defines'][] = [];
  const orig = g.dispatch;
  g.dispatch = (k: Kernel) => {
    if (k.file === 'gemm-sgmat.wgsl') seen.push(k.defines);
    orig.call(g, k);
  };
  setTunedTiles(g, { lookup: (k) => (k === 'subgroup-matrix' ? t : undefined) });
  try {
    await body();
  } finally {
    setTunedTiles(g, undefined);
    g.dispatch = orig;
  }
  return seen;
}

describe('subgroup-matrix GEMM: wide tiles, vector paths, f16→f16 config', () => {
  // K % 8 == 0 and N % 4 == 0: vec4 staging and vec4 stores; M, N, K still non-multiples of the tiles.
  const VSHAPES: [number, number, number][] = [[1, 8, 4], [3, 64, 68], [17, 72, 36], [255, 136, 132]];
  test('vector staging / vec4 epilogue at odd shapes, every weight dtype, scalar fallback rows', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const seen = await withTile(g, DEFAULT_SGMAT_TILE, async () => {
      for (const [i, [M, K, N]] of VSHAPES.entries())
        await runCase(g, 'subgroup-matrix', { M, K, N, wdt: (['bf16', 'f16', 'f32'] as const)[i % 3], bdt: i % 2 ? 'bf16' : null, act: i === 2 ? 'silu' : undefined, seed: i + 3 });
    });
    expect(seen.every((d) => d?.VEC === true && d?.OVEC === true)).toBe(true);
    const scalar = await withTile(g, DEFAULT_SGMAT_TILE, () => runCase(g, 'subgroup-matrix', { M: 17, K: 60, N: 18, wdt: 'bf16' }).then(() => undefined));
    expect(scalar.some((d) => d?.VEC || d?.OVEC)).toBe(false);
  });
  test('128x128 tile (2x4 subgroups) with grouped tile order over several row groups', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const cfg = gemmConfig(g.caps, 'f32')!;
    const t: SgmatTile = { sgm: 2, sgn: 4, pm: 128 / (2 * cfg.M), pn: 128 / (4 * cfg.N), bk: 16 };
    if (!sgmatFits(g.caps, cfg, t)) {
      console.log(`gemm-plan: 128x128 tile does not fit ${g.caps.maxWorkgroupStorage} bytes here`);
      return;
    }
    // 32-row tiles of 2 subgroups x 2 fragments: M = 600 is 19 row blocks, a group of GROUP_M = 16 (groupRows
    // at K = 40) and a partial group of 3.
    expect(groupRows(32, 40, 4)).toBe(GROUP_M);
    await withTile(g, { ...DEFAULT_SGMAT_TILE }, () => runCase(g, 'subgroup-matrix', { M: 600, K: 40, N: 70, wdt: 'bf16', bdt: 'f32' }).then(() => undefined));
    const seen = await withTile(g, t, async () => {
      await runCase(g, 'subgroup-matrix', { M: 255, K: 136, N: 132, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' });
      await runCase(g, 'subgroup-matrix', { M: 131, K: 17, N: 129, wdt: 'f16' });
    });
    expect(seen.length).toBeGreaterThan(0);
  });
  test('f16→f16 config: k-chunks summed in f16 and added into f32', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    if (!gemmConfig(g.caps, 'f16')) {
      console.log(`gemm-plan: f16→f16 cases not run: adapter "${g.caps.description}" reports no f16→f16 config`);
      return;
    }
    for (const flush of [1, 2]) {
      const t: SgmatTile = { ...DEFAULT_SGMAT_TILE, res: 'f16', flush };
      const chunk = flush * t.bk;
      const seen = await withTile(g, t, async () => {
        for (const [M, K, N] of SHAPES) await runCase(g, 'subgroup-matrix', { M, K, N, wdt: 'bf16', seed: M + N, chunk });
        await runCase(g, 'subgroup-matrix', { M: 37, K: 200, N: 44, wdt: 'f16', bdt: 'f32', act: 'gelu_erf', chunk });
      });
      expect(seen.every((d) => d?.RES === 'f16' && d?.FLUSH === flush)).toBe(true);
    }
  });
  test('f16→f16 config: an f16 partial sum beyond 65504 is recomputed in f32', async () => {
    const g = await sgmatGpu();
    if (!g || !gemmConfig(g.caps, 'f16')) return;
    const before = await overflowCount(g);
    // Every product 300 * 300 = 9e4 is itself beyond f16; operands are in range.
    await withTile(g, { ...DEFAULT_SGMAT_TILE, res: 'f16', flush: 1 }, async () => {
      const got = await runCase(g, 'subgroup-matrix', { M: 9, K: 16, N: 11, scaleX: 1 }, (x, w) => { x.fill(300); w.fill(300); });
      expect(got.every(Number.isFinite)).toBe(true);
    });
    expect(await overflowCount(g)).toBeGreaterThan(before);
  });
});

describe('tile groups (groupRows)', () => {
  test("a group's rows of x stay within L2_REUSE_BYTES; at least 1, at most GROUP_M", () => {
    expect(groupRows(128, 3072, 4)).toBe(10); // 10 x 128 rows x 3072 x 4 B = 15.7 MB <= 16 MiB
    expect(groupRows(128, 3072, 2)).toBe(GROUP_M); // f16 x: 16 row blocks fit
    expect(groupRows(128, 15360, 4)).toBe(2); // the single block's linear2 (K = H + M)
    expect(groupRows(128, 1 << 20, 4)).toBe(1); // even one row block over the bound: the row-major walk
    for (const [bm, K] of [[32, 17], [64, 255], [128, 12288]]) expect(groupRows(bm, K, 4) * bm * K * 4 <= L2_REUSE_BYTES || groupRows(bm, K, 4) === 1).toBe(true);
  });
});

describe('workgroup-tiled GEMM (f32)', () => {
  test('odd shapes, f32 / bf16 / f16 weights', async () => {
    const g = await getGpu();
    for (const [i, [M, K, N]] of SHAPES.entries()) await runCase(g, 'workgroup', { M, K, N, wdt: (['f32', 'bf16', 'f16'] as const)[i % 3], seed: i });
  });
  test('bias and activations', async () => {
    const g = await getGpu();
    await runCase(g, 'workgroup', { M: 17, K: 65, N: 19, wdt: 'bf16', bdt: 'f32', act: 'gelu_tanh' });
    await runCase(g, 'workgroup', { M: 37, K: 33, N: 31, wdt: 'f16', bdt: 'bf16', act: 'silu' });
    await runCase(g, 'workgroup', { M: 5, K: 40, N: 70, wdt: 'f32', bdt: 'f16', act: 'gelu_erf' });
  });
  test('split paths are bit-identical to the unsplit result', async () => {
    const g = await getGpu();
    const c: Case = { M: 37, K: 64, N: 45, wdt: 'bf16', bdt: 'f32', act: 'silu' };
    const full = await runCase(g, 'workgroup', c);
    const saved = g.maxBindingBytes;
    g.maxBindingBytes = 1024;
    try {
      expectClose('split vs unsplit', await runCase(g, 'workgroup', c), full, 0);
    } finally {
      g.maxBindingBytes = saved;
    }
  });
});

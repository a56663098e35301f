/**
 * f16 activation storage (src/ops/act-dtype.ts) vs the f64 reference:
 *   GEMM (shaders/gemm-sgmat.wgsl X16 / O16): x read from f16 storage, the output written to f16 storage,
 *     at odd shapes (1, 3, 17, 255), weight dtypes, bias, activations, the split paths and a forced
 *     non-default tile, and the quantized formats (fp8 / q8 / q4 codes dequantized into the same tiles);
 *     a value beyond 65504 written to f16 is clamped and counted in overflow word 2;
 *   the step redo (withF16Redo): a step whose f16 stores overflowed yields exactly the f32-storage result,
 *     one without overflow keeps its f16 storage.
 * The f16 kernels run on an adapter with chromium-experimental-subgroup-matrix at --precision mixed (the
 * trixie root, scripts/sgmat-env.sh, STEP1X_KERNELS=subgroup-matrix; scripts/ci-sgmat.sh runs this file
 * there); elsewhere each such test says so and returns, and the policy tests check that nothing changes.
 *
 * Tolerance with an f16 output: the f16-operand bound (ref.f16Bound) plus the output's rounding,
 * 2^-11 |v| (normal) or 2^-25 (subnormal).
 */
import { getGpu, releaseGpu, randn, uploadAs, uploadPacked, expectClose, expectWithin } from './harness.js';
import * as ref from './ref/gemm.js';
import { linear, type Activation } from '../src/ops/linear.js';
import { activationDtype, canStoreF16, f16Overflows, f16Redos, withActivations, withF16Redo } from '../src/ops/act-dtype.js';
import { setTunedTiles, matrixConfig, sgmatFits } from '../src/ops/plan-gemm.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType, Tensor } from '../src/runtime/tensor.js';
import { linearPacked } from '../src/ops/linear-quant.js';
import type { PackedFormat } from '../src/io/quant.js';

afterAll(releaseGpu);

async function f16Gpu(what: string): Promise<Gpu | null> {
  const g = await getGpu();
  if (canStoreF16(g)) return g;
  console.log(`act-f16: ${what} not run here: adapter "${g.caps.description}" (kernels ${g.kernels}, precision ${g.precision}) cannot store activations in f16 (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

/** A NaN-filled output of storage dtype dt, so skipped elements fail. */
function poisoned(g: Gpu, shape: number[], dt: DType): Tensor {
  const t = g.empty(shape, dt);
  g.writeInto(t, dt === 'f16' ? new Uint16Array(t.numel).fill(0x7e00) : new Float32Array(t.numel).fill(NaN));
  return t;
}

interface Case { M: number; K: number; N: number; xdt: 'f32' | 'f16'; odt: 'f32' | 'f16'; wdt?: DType; bdt?: DType; act?: Activation; seed?: number }

async function gemmCase(g: Gpu, c: Case): Promise<Float32Array> {
  const { M, K, N, xdt, odt, wdt = 'bf16', act, seed = 1 } = c;
  const x = uploadAs(g, randn(M * K, seed * 7 + 1), [M, K], xdt);
  const w = uploadAs(g, randn(N * K, seed * 7 + 2), [N, K], wdt);
  const b = c.bdt ? uploadAs(g, randn(N, seed * 7 + 3), [N], c.bdt) : null;
  const out = poisoned(g, [M, N], odt);
  const ran = g.fileCounts.get('gemm-sgmat.wgsl') ?? 0;
  linear(x.t, w.t, b?.t, { act, out, variant: 'subgroup-matrix' });
  expect(g.fileCounts.get('gemm-sgmat.wgsl') ?? 0).toBeGreaterThan(ran);
  const got = await g.readF32(out);
  const want = ref.linear(x.exact, w.exact, M, N, K, b?.exact, act);
  const bound = ref.f16Bound(x.exact, w.exact, M, N, K, act);
  if (odt === 'f16') for (let i = 0; i < bound.length; i++) bound[i] += 2 ** -11 * (Math.abs(want[i]) + bound[i]) + 2 ** -25;
  expectWithin(`gemm x=${xdt} out=${odt} M=${M} K=${K} N=${N} w=${wdt} b=${c.bdt} act=${act}`, got, want, bound);
  for (const t of [x.t, w.t, b?.t, out]) t?.dispose();
  return got;
}

const SHAPES: [number, number, number][] = [[1, 1, 1], [1, 255, 17], [3, 17, 255], [17, 3, 3], [17, 64, 17], [255, 17, 3], [255, 255, 255], [33, 104, 68]];

describe('GEMM with f16 activation storage (subgroup-matrix)', () => {
  test('odd shapes: f16 x, f16 out, both', async () => {
    const g = await f16Gpu('f16 GEMM shapes');
    if (!g) return;
    for (const [M, K, N] of SHAPES)
      for (const [xdt, odt] of [['f16', 'f32'], ['f32', 'f16'], ['f16', 'f16']] as const) await gemmCase(g, { M, K, N, xdt, odt, seed: M + K + N });
  });
  test('weight and bias dtypes, activations', async () => {
    const g = await f16Gpu('f16 GEMM dtypes');
    if (!g) return;
    await gemmCase(g, { M: 17, K: 65, N: 19, xdt: 'f16', odt: 'f16', wdt: 'f32', bdt: 'f32', act: 'gelu_tanh' });
    await gemmCase(g, { M: 37, K: 32, N: 36, xdt: 'f16', odt: 'f16', wdt: 'f16', bdt: 'bf16', act: 'silu' });
    await gemmCase(g, { M: 5, K: 40, N: 70, xdt: 'f16', odt: 'f16', wdt: 'bf16', bdt: 'bf16', act: 'gelu_erf' });
  });
  test('split paths are bit-identical to the unsplit result', async () => {
    const g = await f16Gpu('f16 GEMM splits');
    if (!g) return;
    const c: Case = { M: 37, K: 64, N: 45, xdt: 'f16', odt: 'f16', bdt: 'f32', act: 'gelu_tanh' };
    const full = await gemmCase(g, c);
    const saved = g.maxBindingBytes;
    g.maxBindingBytes = 1024;
    try {
      expectClose('split vs unsplit', await gemmCase(g, c), full, 0);
    } finally {
      g.maxBindingBytes = saved;
    }
  });
  test('a non-default tile (1x1 subgroups, one fragment)', async () => {
    const g = await f16Gpu('f16 GEMM tile');
    if (!g) return;
    const cfg = matrixConfig(g.caps);
    const t = { sgm: 1, sgn: 1, pm: 1, pn: 1, bk: cfg.K };
    expect(sgmatFits(g.caps, cfg, t)).toBe(true);
    setTunedTiles(g, { lookup: (k) => (k === 'subgroup-matrix' ? t : undefined) });
    try {
      await gemmCase(g, { M: 29, K: 43, N: 53, xdt: 'f16', odt: 'f16', bdt: 'f32' });
    } finally {
      setTunedTiles(g, undefined);
    }
  });
  test('quantized weights (fp8, q8, q4): f16 x, f16 out', async () => {
    const g = await f16Gpu('f16 quantized GEMM');
    if (!g) return;
    for (const [fmt, M, K, N] of [['q8', 17, 64, 19], ['q4', 255, 32, 3], ['fp8_e4m3', 3, 36, 17], ['fp8_e5m2', 1, 4, 255]] as [PackedFormat, number, number, number][]) {
      const { w, exact } = uploadPacked(g, randn(N * K, K + N), N, K, fmt);
      const x = uploadAs(g, randn(M * K, M + K), [M, K], 'f16');
      const out = poisoned(g, [M, N], 'f16');
      linearPacked(x.t, w, undefined, { out });
      const got = await g.readF32(out);
      const want = ref.linear(x.exact, exact, M, N, K);
      const bound = ref.f16Bound(x.exact, exact, M, N, K);
      for (let i = 0; i < bound.length; i++) bound[i] += 2 ** -11 * (Math.abs(want[i]) + bound[i]) + 2 ** -25;
      expectWithin(`${fmt} x=f16 out=f16 M=${M} K=${K} N=${N}`, got, want, bound);
      for (const t of [w.data, w.scales, x.t, out]) t?.dispose();
    }
  });
  test('outputs beyond 65504 are clamped and counted in word 2', async () => {
    const g = await f16Gpu('f16 GEMM overflow');
    if (!g) return;
    const [M, K, N] = [3, 17, 5];
    const x = g.upload(new Float32Array(M * K).fill(1000), [M, K]);
    const w = new Float32Array(N * K).fill(0.01);
    w.fill(10, 2 * K, 3 * K); // column 2: 17 * 1000 * 10 = 170000 > 65504, the others 170
    const wt = g.upload(w, [N, K]);
    const before = await f16Overflows(g);
    const out = linear(x, wt, undefined, { dtype: 'f16', variant: 'subgroup-matrix' });
    expect(out.dtype).toBe('f16');
    const got = await g.readF32(out);
    expect(await f16Overflows(g)).toBe(before + M);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) expect(got[m * N + n]).toBeCloseTo(n === 2 ? 65504 : 170, n === 2 ? 0 : 0);
    for (const t of [x, wt, out]) t.dispose();
  });
});

/** Two chained linears under the policy (hidden and output stored as it says); x [17, 40]. */
function twoLayers(g: Gpu, x: Tensor, w1: Tensor, w2: Tensor, dts: DType[]): () => Promise<Tensor> {
  return async () => {
    const h = linear(x, w1, undefined, { act: 'gelu_tanh' });
    const y = linear(h, w2);
    dts.push(h.dtype, y.dtype);
    h.dispose();
    return y;
  };
}

/** The step's output on the host (freed after). */
async function hostOf(g: Gpu, step: () => Promise<Tensor>): Promise<Float32Array> {
  const y = await step();
  const r = await g.readF32(y);
  y.dispose();
  return r;
}

describe('activation policy and the f16 step redo', () => {
  test('outside withActivations, and where f16 storage is unavailable, ops keep f32 (bit-identical)', async () => {
    const g = await getGpu();
    expect(activationDtype(g)).toBe('f32');
    const x = g.upload(randn(17 * 40, 5), [17, 40]);
    const w1 = g.upload(randn(33 * 40, 6), [33, 40]), w2 = g.upload(randn(9 * 33, 7), [9, 33]);
    const dts: DType[] = [];
    const plain = await hostOf(g, twoLayers(g, x, w1, w2, dts));
    expect(dts).toEqual(['f32', 'f32']);
    if (!canStoreF16(g)) {
      const inScope: DType[] = [];
      expectClose('f16 policy on an f32-only device', await withF16Redo(g, 'test', twoLayers(g, x, w1, w2, inScope)), plain, 0);
      expect(inScope).toEqual(['f32', 'f32']);
      console.log(`act-f16: policy checked as a no-op here (kernels ${g.kernels}, precision ${g.precision})`);
    }
    for (const t of [x, w1, w2]) t.dispose();
  });
  test('no overflow: the step keeps f16 storage and matches within the f16 bound', async () => {
    const g = await f16Gpu('f16 step without overflow');
    if (!g) return;
    const x = g.upload(randn(17 * 40, 5), [17, 40]);
    const w1 = g.upload(randn(33 * 40, 6), [33, 40]), w2 = g.upload(randn(9 * 33, 7), [9, 33]);
    const f32: DType[] = [], f16: DType[] = [];
    const want = await withActivations(g, 'f32', () => hostOf(g, twoLayers(g, x, w1, w2, f32)));
    const redos = f16Redos(g);
    const got = await withF16Redo(g, 'test step', twoLayers(g, x, w1, w2, f16));
    expect(f16).toEqual(['f16', 'f16']);
    expect(f16Redos(g)).toBe(redos);
    expectClose('f16 storage vs f32 storage', got, want, 0.05, 0.01);
    for (const t of [x, w1, w2]) t.dispose();
  });
  test('injected overflow in the hidden: the redo yields exactly the f32-storage result', async () => {
    const g = await f16Gpu('f16 step redo');
    if (!g) return;
    const xh = randn(17 * 40, 5);
    xh.fill(4000, 3 * 40, 4 * 40); // row 3 of the hidden reaches ~1e5 (beyond f16)
    const x = g.upload(xh, [17, 40]);
    const w1 = g.upload(randn(33 * 40, 6).map((v) => 1 + v * 0.1), [33, 40]), w2 = g.upload(randn(9 * 33, 7), [9, 33]);
    const f32: DType[] = [], f16: DType[] = [];
    const want = await withActivations(g, 'f32', () => hostOf(g, twoLayers(g, x, w1, w2, f32)));
    const redos = f16Redos(g);
    const got = await withF16Redo(g, 'test step', twoLayers(g, x, w1, w2, f16));
    expect(f16).toEqual(['f16', 'f16', 'f32', 'f32']); // the f16 try, then the f32 redo
    expect(f16Redos(g)).toBe(redos + 1);
    expectClose('redo vs f32 storage', got, want, 0);
    for (const t of [x, w1, w2]) t.dispose();
  });
});

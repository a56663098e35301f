/**
 * GEMMs writing their part of a concatenation in place (ops/linear.ts and ops/linear-quant.ts `out` + `outCol`,
 * nn/weight.ts `into`, ops/layout.ts writeColumns): the single block's mlp columns of cat(attn, mlp) and the
 * double block's joint v rows. Columns [col, col + N) of a SENTINEL-filled out [M, D] must equal the plain-TS
 * f64 reference (f32 kernels: 2e-6 + 2e-7·K abs, 1e-6 rel; the subgroup-matrix plan: the f16-operand bound of
 * ref.f16Bound), every other element must still be SENTINEL. Odd shapes (M 1, 3, 17, 255; N and col off every
 * tile and vector width), each kernel family, a split under a small binding limit, a packed q8 weight, and a
 * LoRA weight (bit-equal to its forward without `into`).
 */
import { getGpu, releaseGpu, randn, uploadAs, expectClose, expectWithin, withBindingLimit } from './harness.js';
import { planGemm } from '../src/ops/plan-gemm.js';
import * as ref from './ref/gemm.js';
import { linear, type GemmVariant } from '../src/ops/linear.js';
import { linearPacked } from '../src/ops/linear-quant.js';
import { writeColumns } from '../src/ops/layout.js';
import { Weight } from '../src/nn/weight.js';
import { quantizeBlocks, dequantizeBlocks, QBLOCK } from '../src/io/quant.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType, Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const SENTINEL = -3.5;
const tolFor = (K: number): number => 2e-6 + 2e-7 * K;

/** Split out [M, D] into columns [col, col + N) and the rest; the rest must be untouched. */
function columns(got: Float32Array, M: number, D: number, col: number, N: number): Float32Array {
  const part = new Float32Array(M * N);
  let touched = 0;
  for (let m = 0; m < M; m++)
    for (let d = 0; d < D; d++) {
      const v = got[m * D + d];
      if (d >= col && d < col + N) part[m * N + d - col] = v;
      else if (v !== SENTINEL) touched++;
    }
  expect(touched).toBe(0);
  return part;
}

function sentinelOut(g: Gpu, M: number, D: number): Tensor {
  return g.upload(new Float32Array(M * D).fill(SENTINEL), [M, D]);
}

function check(g: Gpu, name: string, got: Float32Array, x: Float32Array, w: Float32Array, M: number, N: number, K: number, wdt: DType, variant: GemmVariant, b?: Float32Array): void {
  const want = ref.linear(x, w, M, N, K, b, 'silu');
  if (planGemm(g, { M, N, K, wdt }, variant)?.kind === 'subgroup-matrix') expectWithin(`${name} (subgroup-matrix, f16 bound)`, got, want, ref.f16Bound(x, w, M, N, K, 'silu'));
  else expectClose(name, got, want, tolFor(K), 1e-6);
}

// M, K, N, D (out width), col, weight dtype, variant
const CASES: [number, number, number, number, number, DType, GemmVariant][] = [
  [1, 3, 1, 4, 3, 'f32', 'auto'],
  [3, 17, 5, 13, 7, 'bf16', 'auto'],
  [17, 20, 33, 70, 37, 'f32', 'tiled'],
  [255, 64, 67, 133, 66, 'bf16', 'auto'],
  [4, 40, 9, 21, 11, 'f16', 'gemv'],
  [17, 9, 6, 15, 1, 'f32', 'naive'],
  [64, 32, 64, 192, 128, 'bf16', 'auto'],
];

describe('linear into columns of a wider out', () => {
  for (const [M, K, N, D, col, wdt, variant] of CASES) {
    test(`M=${M} K=${K} N=${N} into [${col}, ${col + N}) of ${D} w=${wdt} variant=${variant}`, async () => {
      const g = await getGpu();
      const x = randn(M * K, M + K), w = uploadAs(g, randn(N * K, N + 2), [N, K], wdt), b = randn(N, 5);
      const xt = g.upload(x, [M, K]), bt = g.upload(b, [N]), out = sentinelOut(g, M, D);
      expect(linear(xt, w.t, bt, { act: 'silu', variant, out, outCol: col })).toBe(out);
      check(g, `M=${M} N=${N} col=${col}`, columns(await g.readF32(out), M, D, col, N), x, w.exact, M, N, K, wdt, variant, b);
      for (const t of [xt, w.t, bt, out]) t.dispose();
    });
  }

  test('split along N and M under a small binding limit', async () => {
    const g = await getGpu();
    const [M, K, N, D, col] = [37, 24, 29, 50, 17];
    const x = randn(M * K, 3), w = uploadAs(g, randn(N * K, 4), [N, K], 'bf16'), b = randn(N, 6);
    const xt = g.upload(x, [M, K]), bt = g.upload(b, [N]), out = sentinelOut(g, M, D);
    await withBindingLimit(g, 1024, async () => linear(xt, w.t, bt, { act: 'silu', out, outCol: col }));
    check(g, 'split', columns(await g.readF32(out), M, D, col, N), x, w.exact, M, N, K, 'bf16', 'auto', b);
    for (const t of [xt, w.t, bt, out]) t.dispose();
  });

  test('packed q8 weight (linearPacked) into columns', async () => {
    const g = await getGpu();
    const [M, K, N, D, col] = [17, 2 * QBLOCK, 11, 30, 13];
    const x = randn(M * K, 8), raw = randn(N * K, 9);
    const q = quantizeBlocks(raw, N, K, 'q8'), exact = dequantizeBlocks(q, N, K, 'q8');
    const words = new Uint32Array(q.data.buffer, 0, q.data.length / 4);
    const data = g.upload(words, [N, words.length / N], 'u32'), scales = g.upload(q.scales, [N, K / QBLOCK], 'f16');
    const xt = g.upload(x, [M, K]), out = sentinelOut(g, M, D);
    linearPacked(xt, { format: 'q8', data, scales, block: QBLOCK, N, K }, undefined, { act: 'silu', out, outCol: col });
    check(g, 'q8', columns(await g.readF32(out), M, D, col, N), x, exact, M, N, K, 'f32', 'auto');
    for (const t of [xt, data, scales, out]) t.dispose();
  });

  test('a weight with a LoRA adapter: GEMM + adapter, then the columns written (writeColumns)', async () => {
    const g = await getGpu();
    const [M, K, N, D, col, r] = [5, 12, 7, 19, 9, 3];
    const x = randn(M * K, 10), wv = randn(N * K, 11), down = randn(r * K, 12), up = randn(N * r, 13);
    const wt = g.upload(wv, [N, K]), dt = g.upload(down, [r, K]), ut = g.upload(up, [N, r]);
    const weight = new Weight('f32', N, K, wt, undefined, [{ down: dt, up: ut }]);
    const xt = g.upload(x, [M, K]), out = sentinelOut(g, M, D);
    expect(weight.forward(xt, undefined, 'silu', { out, col })).toBe(out);
    const eff = Float32Array.from(wv, (v, i) => {
      const [n, k] = [Math.floor(i / K), i % K];
      let s = 0;
      for (let j = 0; j < r; j++) s += up[n * r + j] * down[j * K + k];
      return v + s;
    });
    const got = columns(await g.readF32(out), M, D, col, N), plain = weight.forward(xt, undefined, 'silu');
    // the same kernels as without `into`, bit for bit; on f32 kernels also the f64 reference
    expect(Array.from(got)).toEqual(Array.from(await g.readF32(plain)));
    if (planGemm(g, { M, N, K, wdt: 'f32' })?.kind !== 'subgroup-matrix') expectClose('lora', got, ref.linear(x, eff, M, N, K, undefined, 'silu'), 1e-5, 1e-5);
    for (const t of [xt, out, plain]) t.dispose();
    weight.dispose();
  });

  test('argument errors name the shapes', async () => {
    const g = await getGpu();
    const xt = g.upload(randn(6, 1), [2, 3]), w = g.upload(randn(12, 2), [4, 3]), out = g.empty([2, 6]);
    expect(() => linear(xt, w, undefined, { out, outCol: 3 })).toThrow(/out f32\[2,6\] must be f32\/f16 \[\.\.\., ≥ 7\] with 2 rows \(columns from 3\)/);
    expect(() => writeColumns(g.empty([2, 4]), out, 3)).toThrow(/writeColumns: src f32\[2,4\] does not fit columns \[3, 7\) of dst f32\[2,6\]/);
    for (const t of [xt, w, out]) t.dispose();
  });
});

/**
 * Packed-weight GEMM (shaders/gemm-quant.wgsl, or gemm-sgmat.wgsl with QUANT where the device's plan is
 * subgroup-matrix: the trixie root with STEP1X_KERNELS=subgroup-matrix; f16-operand bound there) vs the f64
 * reference over the exactly dequantized weights (src/io/quant.ts decoders): every format (fp8 E4M3,
 * fp8 E5M2, q8, q4) at odd M / N and several K, bias dtypes, fused activations, the N / M split paths,
 * row slices of a fused matrix, and unmerged LoRA adapters. Also the host codecs themselves.
 */
import { getGpu, releaseGpu, randn, uploadAs, poison, expectClose, expectWithin, withBindingLimit } from './harness.js';
import { planGemm } from '../src/ops/plan-gemm.js';
import * as ref from './ref/gemm.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { DType } from '../src/runtime/tensor.js';
import type { Activation } from '../src/ops/linear.js';
import { linearPacked } from '../src/ops/linear-quant.js';
import { Weight } from '../src/nn/weight.js';
import {
  E4M3_TABLE, E5M2_TABLE, encodeFp8, encodeFp8Array, decodeFp8Array, quantizeBlocks, dequantizeBlocks, QBLOCK, type PackedFormat,
} from '../src/io/quant.js';
import { f16BitsToF32 } from '../src/runtime/half.js';

afterAll(releaseGpu);

const tolFor = (K: number): number => 2e-6 + 2e-7 * K;

/** Host encode of [N, K] values in `fmt` → packed u32 words, f16 scales and the exact dequantized values. */
function pack(w: Float32Array, N: number, K: number, fmt: PackedFormat): { words: Uint32Array; scales?: Uint16Array; exact: Float32Array } {
  if (fmt === 'q8' || fmt === 'q4') {
    const q = quantizeBlocks(w, N, K, fmt);
    return { words: new Uint32Array(q.data.buffer, 0, q.data.length / 4), scales: q.scales, exact: dequantizeBlocks(q, N, K, fmt) };
  }
  const codes = encodeFp8Array(w, fmt);
  return { words: new Uint32Array(codes.buffer, 0, codes.length / 4), exact: decodeFp8Array(codes, fmt) };
}

function uploadPacked(g: Gpu, w: Float32Array, N: number, K: number, fmt: PackedFormat): { weight: Weight; exact: Float32Array } {
  const p = pack(w, N, K, fmt);
  const data = g.upload(p.words, [N, p.words.length / N], 'u32');
  const scales = p.scales ? g.upload(p.scales, [N, K / QBLOCK], 'f16') : undefined;
  return { weight: new Weight(fmt, N, K, data, scales), exact: p.exact };
}

interface Case {
  fmt: PackedFormat;
  M: number;
  K: number;
  N: number;
  bdt?: DType | null;
  act?: Activation;
  seed?: number;
}

async function runCase(g: Gpu, c: Case): Promise<void> {
  const { fmt, M, K, N, bdt = null, act, seed = 1 } = c;
  const x = randn(M * K, seed * 7 + 1);
  // Weights spanning several binades (and fp8 subnormals) so every decoder branch is used.
  const raw = randn(N * K, seed * 7 + 2).map((v, i) => v * 2 ** ((i % 7) - 6));
  const { weight, exact } = uploadPacked(g, raw, N, K, fmt);
  const b = bdt ? uploadAs(g, randn(N, seed * 7 + 3), [N], bdt) : null;
  const xt = g.upload(x, [M, K]);
  const out = g.empty([M, N]);
  poison(g, out);
  // Where the device's plan is subgroup-matrix the codes are dequantized into gemm-sgmat's f16 tiles.
  const sg = planGemm(g, { M, N, K, wdt: 'f32' })?.kind === 'subgroup-matrix';
  const file = sg ? 'gemm-sgmat.wgsl' : 'gemm-quant.wgsl';
  const ran = g.fileCounts.get(file) ?? 0;
  linearPacked(xt, { format: fmt, data: weight.data, scales: weight.scales, block: QBLOCK, N, K }, b?.t, { act, out });
  expect(g.fileCounts.get(file) ?? 0).toBeGreaterThan(ran);
  const got = await g.readF32(out);
  const want = ref.linear(x, exact, M, N, K, b?.exact, act);
  const name = `${fmt} M=${M} K=${K} N=${N} b=${bdt} act=${act}`;
  if (sg) expectWithin(`${name} (subgroup-matrix, f16 bound)`, got, want, ref.f16Bound(x, exact, M, N, K, act));
  else expectClose(name, got, want, tolFor(K), 1e-6);
  for (const t of [xt, b?.t, out]) t?.dispose();
  weight.dispose();
}

const FORMATS: PackedFormat[] = ['fp8_e4m3', 'fp8_e5m2', 'q8', 'q4'];

describe('host codecs', () => {
  test('E4M3: 448 max, 2^-9 smallest subnormal, NaN codes, every finite code round-trips', () => {
    expect(E4M3_TABLE[0x7e]).toBe(448);
    expect(E4M3_TABLE[0x01]).toBe(2 ** -9);
    expect(E4M3_TABLE[0x38]).toBe(1);
    expect(Number.isNaN(E4M3_TABLE[0x7f]) && Number.isNaN(E4M3_TABLE[0xff])).toBe(true);
    for (let b = 0; b < 256; b++) if (Number.isFinite(E4M3_TABLE[b]) && b !== 0x80) expect(encodeFp8(E4M3_TABLE[b], 'fp8_e4m3')).toBe(b);
    expect(encodeFp8(1e6, 'fp8_e4m3')).toBe(0x7e); // saturates
    expect(encodeFp8(1.0625, 'fp8_e4m3')).toBe(0x38); // tie 1 | 1.125 -> even code
    expect(encodeFp8(1.1875, 'fp8_e4m3')).toBe(0x3a); // tie 1.125 | 1.25 -> even code
  });
  test('E5M2 is the top byte of an f16', () => {
    for (let b = 0; b < 256; b++) {
      const f = f16BitsToF32(b << 8);
      if (Number.isNaN(f)) expect(Number.isNaN(E5M2_TABLE[b])).toBe(true);
      else expect(E5M2_TABLE[b]).toBe(f);
    }
  });
  test('q8 / q4 blocks: codes in range, error within half a step of each block scale', () => {
    const N = 3, K = 4 * QBLOCK;
    const w = randn(N * K, 5, 3);
    for (const fmt of ['q8', 'q4'] as const) {
      const q = quantizeBlocks(w, N, K, fmt);
      const d = dequantizeBlocks(q, N, K, fmt);
      for (let i = 0; i < w.length; i++) {
        const s = f16BitsToF32(q.scales[Math.floor(i / QBLOCK)]);
        expect(Math.abs(d[i] - w[i])).toBeLessThanOrEqual(s * 0.5 + 1e-3 * Math.abs(w[i]));
      }
    }
  });
});

describe('gemm-quant kernel', () => {
  for (const fmt of FORMATS)
    test(`${fmt}: odd M and N, several K, bias dtypes, activations`, async () => {
      const g = await getGpu();
      const Ks = fmt === 'q8' || fmt === 'q4' ? [32, 96, 160] : [4, 12, 36, 100];
      let seed = 1;
      for (const M of [1, 3, 17])
        for (const K of Ks) for (const N of [1, 5, 33, 130]) await runCase(g, { fmt, M, K, N, seed: seed++ });
      await runCase(g, { fmt, M: 5, K: Ks[1], N: 7, bdt: 'f32', act: 'gelu_tanh' });
      await runCase(g, { fmt, M: 2, K: Ks[1], N: 9, bdt: 'bf16', act: 'silu' });
      await runCase(g, { fmt, M: 66, K: Ks[2], N: 65, bdt: 'f16' });
      await runCase(g, { fmt, M: 255, K: Ks[0], N: 17, bdt: 'f32', act: 'silu' });
    });

  test('split paths (maxBindingBytes lowered) equal the unsplit result bit for bit', async () => {
    const g = await getGpu();
    for (const fmt of FORMATS) {
      const M = 40, K = 96, N = 70;
      const x = randn(M * K, 11);
      const { weight } = uploadPacked(g, randn(N * K, 12), N, K, fmt);
      const xt = g.upload(x, [M, K]);
      const pw = { format: fmt, data: weight.data, scales: weight.scales, block: QBLOCK, N, K };
      const full = linearPacked(xt, pw);
      const a = await g.readF32(full);
      const split = await withBindingLimit(g, 2048, async () => linearPacked(xt, pw));
      const b = await g.readF32(split);
      expectClose(`${fmt} split`, b, a, 0, 0);
      for (const t of [xt, full, split]) t.dispose();
      weight.dispose();
    }
  });

  test('Weight.rows carries scales and LoRA adapters; adapters add s·up(down(x))', async () => {
    const g = await getGpu();
    const M = 6, K = 64, N = 48, r = 3;
    const x = randn(M * K, 21);
    for (const fmt of ['q8', 'q4', 'fp8_e4m3'] as PackedFormat[]) {
      const p = pack(randn(N * K, 22), N, K, fmt);
      const down = randn(r * K, 23), up = randn(N * r, 24, 0.5);
      const w = new Weight(fmt, N, K, g.upload(p.words, [N, p.words.length / N], 'u32'), p.scales ? g.upload(p.scales, [N, K / QBLOCK], 'f16') : undefined,
        [{ down: g.upload(down, [r, K]), up: g.upload(up, [N, r]) }]);
      // reference weight: exact + up @ down
      const eff = Float64Array.from(p.exact);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) for (let i = 0; i < r; i++) eff[n * K + k] += up[n * r + i] * down[i * K + k];
      const xt = g.upload(x, [M, K]);
      for (const [s, c] of [[0, 16], [16, 16], [32, 16]]) {
        const part = w.rows(s, c);
        const y = part.forward(xt, undefined, 'gelu_tanh');
        const got = await g.readF32(y);
        const want = ref.linear(x, eff.subarray(s * K, (s + c) * K), M, c, K, undefined, 'gelu_tanh');
        if (planGemm(g, { M, N: r, K, wdt: 'f32' })?.kind === 'subgroup-matrix') {
          // the adapter's two GEMMs run on matrix units with f16 operands: bound the chain up·(down·x)
          // (error of h = down·x carried through |up|, plus up's own rounding) on top of the base matrix's
          const h = ref.linear(x, down, M, r, K), hb = ref.f16Bound(x, down, M, r, K);
          const upRows = up.subarray(s * r, (s + c) * r);
          const chain = ref.f16Bound(h, upRows, M, c, r);
          const base = ref.f16Bound(x, p.exact.subarray(s * K, (s + c) * K), M, c, K);
          const bound = Float64Array.from(base, (b, i) => {
            const m = Math.floor(i / c), n = i % c;
            let carried = 0;
            for (let j = 0; j < r; j++) carried += Math.abs(upRows[n * r + j]) * hb[m * r + j];
            return 1.2 * (b + chain[i] + carried) + 2e-5; // GELU-tanh is 1.2-Lipschitz
          });
          expectWithin(`${fmt} rows(${s}, ${c}) + LoRA (subgroup-matrix, f16 bound)`, got, want, bound);
        } else expectClose(`${fmt} rows(${s}, ${c}) + LoRA`, got, want, 2e-5, 1e-5);
        y.dispose();
        part.dispose();
      }
      xt.dispose();
      w.dispose();
    }
  });
});

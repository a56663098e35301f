/**
 * The implicit-GEMM conv (shaders/gemm-sgmat.wgsl with CONV, common/conv-gather.wgsl; plan src/ops/plan-conv.ts)
 * vs the f64 reference (kernels-test/ref/conv.ts), on an adapter with chromium-experimental-subgroup-matrix (the
 * trixie root, scripts/sgmat-env.sh); elsewhere each test says so and returns, and the CI guard
 * (scripts/ci-sgmat.sh) fails when no gemm-sgmat dispatch happened there.
 * Shapes: 1, 3, 17, 255 channels and sizes (non-multiples of every tile), 1x1 and 3x3, stride 1 with pad 1 and
 * stride 2 with the VAE Downsample's (0, 1, 0, 1), the fused nearest-2x upsample, token-major in/out, bias and
 * residual, bf16 weights, input/output channel blocks under a small binding limit, the f16→f16 config; vec4
 * weight loads (WVEC) where K, ldw and the block offset allow, asserted per case on the dispatched defines.
 *
 * Tolerance: the conv is the GEMM im2col(x) [Ho*Wo, C*KH*KW] x W^T, so the per-element f16-operand bound of
 * kernels-test/ref/gemm.ts applies on im2col(x) (f16Bound; f16ResultBound with the k-chunk on the f16→f16
 * config): (2^-10 + K 2^-23) sum_k |a_k w_k| + 2^-24 sum_k |a_k| + 1e-6. Input-channel blocks add their f32
 * sums onto the output once per block (covered by the K 2^-23 term).
 */
import { getGpu, releaseGpu, randn, uploadAs, expectClose, expectWithin, withBindingLimit } from './harness.js';
import * as ref from './ref/conv.js';
import { f16Bound, f16ResultBound } from './ref/gemm.js';
import { conv2d } from '../src/ops/conv.js';
import { overflowCount, gemmConfig, DEFAULT_SGMAT_TILE, type SgmatTile } from '../src/ops/plan-gemm.js';
import { hasMatrixUnits } from '../src/runtime/caps.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(releaseGpu);

type Pad = [number, number, number, number];
interface Case {
  name: string; B: number; C: number; H: number; W: number; O: number; K: 1 | 3; stride: 1 | 2; pad: Pad;
  bias?: boolean; res?: boolean; ups?: boolean; wdt?: 'f32' | 'bf16'; tile?: SgmatTile; chunk?: number; seed?: number;
  /** The weight rows allow vector loads (WVEC: K, ldw and the block's w_off multiples of 8 bf16 / 4 f32). */
  wvec?: boolean;
}

const P1: Pad = [1, 1, 1, 1], P0: Pad = [0, 0, 0, 0], DOWN: Pad = [0, 1, 0, 1];
const CASES: Case[] = [
  { name: 'conv_in-like 3→17 3x3 p1', B: 1, C: 3, H: 17, W: 17, O: 17, K: 3, stride: 1, pad: P1, bias: true },
  { name: '17→255 3x3 p1 + residual', B: 1, C: 17, H: 9, W: 7, O: 255, K: 3, stride: 1, pad: P1, bias: true, res: true },
  { name: '255→3 1x1 (nin_shortcut)', B: 2, C: 255, H: 5, W: 6, O: 3, K: 1, stride: 1, pad: P0, bias: true },
  { name: '1→1 3x3 p1, one pixel', B: 1, C: 1, H: 1, W: 1, O: 1, K: 3, stride: 1, pad: P1, bias: true },
  { name: 'Downsample 17→33 3x3 s2 pad(0,1,0,1)', B: 1, C: 17, H: 9, W: 10, O: 33, K: 3, stride: 2, pad: DOWN, bias: true },
  { name: 'Downsample 3→3 3x3 s2, odd size', B: 2, C: 3, H: 17, W: 3, O: 3, K: 3, stride: 2, pad: DOWN },
  { name: 'Upsample 5→17 nearest-2x + 3x3 p1', B: 1, C: 5, H: 5, W: 3, O: 17, K: 3, stride: 1, pad: P1, bias: true, ups: true },
  { name: '33→31 3x3 p1 bf16 weights, many pixels', B: 1, C: 33, H: 23, W: 19, O: 31, K: 3, stride: 1, pad: P1, bias: true, res: true, wdt: 'bf16' },
  { name: '16→17 3x3 p1 bf16 weights, vec4 weight loads', B: 1, C: 16, H: 9, W: 11, O: 17, K: 3, stride: 1, pad: P1, bias: true, res: true, wdt: 'bf16', wvec: true },
  { name: '8→19 1x1 f32 weights, vec4 weight loads', B: 2, C: 8, H: 5, W: 3, O: 19, K: 1, stride: 1, pad: P0, bias: true, wvec: true },
  { name: 'Downsample 24→33 3x3 s2 f32, vec4 weight loads', B: 1, C: 24, H: 17, W: 9, O: 33, K: 3, stride: 2, pad: DOWN, bias: true, wvec: true },
  { name: 'Upsample 8→3 nearest-2x + 3x3 p1 bf16, vec4 weight loads', B: 1, C: 8, H: 3, W: 5, O: 3, K: 3, stride: 1, pad: P1, ups: true, wdt: 'bf16', wvec: true },
];

async function sgmatGpu(): Promise<Gpu | null> {
  const g = await getGpu();
  if (hasMatrixUnits(g.caps) && g.hasFeature('chromium-experimental-subgroup-matrix')) return g;
  console.log(`conv-sgmat: implicit-GEMM conv cases not run here: adapter "${g.caps.description}" has no subgroup-matrix feature in use (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

/** f64 reference and per-element bound, both [B, O, Ho, Wo]. */
function expected(c: Case, x: Float32Array, w: Float32Array, bv: Float32Array | null, rv: Float32Array | null): { out: Float64Array; bound: Float64Array; Ho: number; Wo: number } {
  const H = c.ups ? 2 * c.H : c.H, W = c.ups ? 2 * c.W : c.W;
  const xin = c.ups ? ref.upsampleNearest2x(x, c.B * c.C, c.H, c.W) : x;
  const s = { B: c.B, C: c.C, H, W, O: c.O, KH: c.K, KW: c.K };
  const r = ref.conv2d(xin, w, bv, s, c.stride, c.pad);
  const bound = new Float64Array(r.out.length);
  for (let bi = 0; bi < c.B; bi++) {
    const { A, M, K } = ref.im2col(xin, s, bi, c.stride, c.pad);
    const b = c.chunk ? f16ResultBound(A, w, M, c.O, K, c.chunk) : f16Bound(A, w, M, c.O, K);
    for (let m = 0; m < M; m++) for (let o = 0; o < c.O; o++) bound[(bi * c.O + o) * M + m] = b[m * c.O + o];
  }
  if (rv) for (let i = 0; i < r.out.length; i++) r.out[i] += rv[i];
  return { ...r, bound };
}

/** Run case c forced onto the implicit GEMM; checks that gemm-sgmat.wgsl ran and the result is within the bound. */
async function run(g: Gpu, c: Case, limit?: number): Promise<Float32Array> {
  const seed = c.seed ?? c.C + 7 * c.O;
  const x = randn(c.B * c.C * c.H * c.W, seed, 1);
  const wv = randn(c.O * c.C * c.K * c.K, seed + 1, 0.3);
  const bv = c.bias ? randn(c.O, seed + 2, 0.5) : null;
  const { t: wt, exact } = uploadAs(g, wv, [c.O, c.C, c.K, c.K], c.wdt ?? 'f32');
  const e0 = expected(c, x, exact, bv, null);
  const rv = c.res ? randn(c.B * c.O * e0.Ho * e0.Wo, seed + 3) : null;
  const e = rv ? expected(c, x, exact, bv, rv) : e0;
  const xt = g.upload(x, [c.B, c.C, c.H, c.W]);
  const bt = bv ? g.upload(bv, [c.O]) : undefined;
  const rt = rv ? g.upload(rv, [c.B, c.O, e.Ho, e.Wo]) : undefined;
  const ran = g.fileCounts.get('gemm-sgmat.wgsl') ?? 0;
  const go = () => conv2d(xt, wt, bt, { stride: c.stride, pad: c.pad, residual: rt, upsample2x: c.ups, variant: 'subgroup-matrix', tile: c.tile });
  // every implicit-GEMM dispatch of the case takes the weight staging its shape allows
  const wvec: boolean[] = [];
  const dispatch = g.dispatch;
  g.dispatch = (k) => {
    if (k.file === 'gemm-sgmat.wgsl') wvec.push(!!k.defines?.WVEC);
    return dispatch.call(g, k);
  };
  let y;
  try {
    y = limit ? await withBindingLimit(g, limit, async () => go()) : go();
  } finally {
    g.dispatch = dispatch;
  }
  expect(wvec.length).toBeGreaterThan(0);
  expect(wvec.every((v) => v === !!c.wvec)).toBe(true);
  expect(y.shape).toEqual([c.B, c.O, e.Ho, e.Wo]);
  expect(g.fileCounts.get('gemm-sgmat.wgsl') ?? 0).toBeGreaterThan(ran);
  const got = await g.readF32(y);
  expectWithin(`conv-sgmat ${c.name}${limit ? ` (limit ${limit})` : ''}`, got, e.out, e.bound);
  for (const t of [xt, wt, bt, rt, y]) t?.dispose();
  return got;
}

describe('implicit-GEMM conv on subgroup matrices (f16 operands)', () => {
  for (const c of CASES)
    test(`${c.name}: B=${c.B} ${c.H}x${c.W} C=${c.C} O=${c.O}`, async () => {
      const g = await sgmatGpu();
      if (!g) return;
      await run(g, c);
    });

  test('input and output channel blocks under a small binding limit (block sums added in the epilogue)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    // 17x13 planes (884 bytes): 2-channel input blocks (8 of 9 accumulate), 2-plane output blocks.
    const c: Case = { name: 'split 17→9 3x3 p1', B: 2, C: 17, H: 17, W: 13, O: 9, K: 3, stride: 1, pad: P1, bias: true, res: true };
    const full = await run(g, c);
    const split = await run(g, c, 256 + 2 * 17 * 13 * 4 + 64);
    expect(split.length).toBe(full.length);
  });

  test('token-major in and out (the VAE attention q/k/v/proj_out 1x1 convs)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const B = 2, C = 17, H = 3, W = 5, O = 19, HW = H * W;
    const x = randn(B * C * HW, 11), wv = randn(O * C, 12, 0.5), bv = randn(O, 13);
    const s = { B, C, H, W, O, KH: 1, KW: 1 };
    const r = ref.conv2d(x, wv, bv, s, 1, P0).out;
    const bound = new Float64Array(r.length);
    for (let bi = 0; bi < B; bi++) {
      const { A } = ref.im2col(x, s, bi, 1, P0);
      const bb = f16Bound(A, wv, HW, O, C);
      for (let m = 0; m < HW; m++) for (let o = 0; o < O; o++) bound[(bi * O + o) * HW + m] = bb[m * O + o];
    }
    const wt = g.upload(wv, [O, C, 1, 1]), bt = g.upload(bv, [O]);
    const xtok = g.upload(Float32Array.from(ref.toTokens(x, B, C, HW)), [B, HW, C]);
    const y = conv2d(xtok, wt, bt, { inTokens: [H, W], outTokens: true, variant: 'subgroup-matrix' });
    expect(y.shape).toEqual([B, HW, O]);
    expectWithin('tokens in/out', await g.readF32(y), ref.toTokens(r, B, O, HW), ref.toTokens(bound, B, O, HW));
  });

  test('non-default tiles and the f16→f16 config (k-chunks summed in f16, added into f32)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const base: Case = { name: 'tile', B: 1, C: 17, H: 11, W: 7, O: 20, K: 3, stride: 1, pad: P1, bias: true };
    await run(g, { ...base, name: 'tile 1x2 subgroups, 3x1 fragments', tile: { sgm: 1, sgn: 2, pm: 3, pn: 1, bk: 16 } });
    if (!gemmConfig(g.caps, 'f16')) {
      console.log(`conv-sgmat: f16→f16 case not run: adapter "${g.caps.description}" reports no f16→f16 config`);
      return;
    }
    const t: SgmatTile = { ...DEFAULT_SGMAT_TILE, res: 'f16', flush: 1 };
    await run(g, { ...base, name: 'f16→f16, flush 1', tile: t, chunk: t.bk, wdt: 'bf16' });
    await run(g, { ...base, name: 'f16→f16 Downsample', stride: 2, pad: DOWN, tile: t, chunk: t.bk });
  });

  test('an input beyond 65504 is recomputed in f32 (no inf)', async () => {
    const g = await sgmatGpu();
    if (!g) return;
    const B = 1, C = 3, H = 6, W = 5, O = 4;
    const x = randn(B * C * H * W, 5);
    x[2 * H * W + 7] = 1e5;
    const wv = randn(O * C * 9, 6, 0.5);
    const r = ref.conv2d(x, wv, null, { B, C, H, W, O, KH: 3, KW: 3 }, 1, P1).out;
    const before = await overflowCount(g);
    const out = conv2d(g.upload(x, [B, C, H, W]), g.upload(wv, [O, C, 3, 3]), undefined, { pad: P1, variant: 'subgroup-matrix' });
    const got = await g.readF32(out);
    expect(got.every(Number.isFinite)).toBe(true);
    expect(await overflowCount(g)).toBeGreaterThan(before);
    expectClose('overflow recompute', got, r, 1e5 * 2e-6, 1e-5);
  });
});

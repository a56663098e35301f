import { getGpu, releaseGpu, randn, uploadAs, expectClose, withBindingLimit } from './harness.js';
import * as ref from './ref/conv.js';
import { conv2d as conv2dAny, upsampleNearest2x, groupNorm, type Conv2dOpts } from '../src/ops/conv.js';
import type { Tensor } from '../src/runtime/tensor.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(releaseGpu);

/** The direct f32 kernel (conv2d.wgsl) whatever the device plan; the implicit GEMM: conv-sgmat.test.ts. */
const conv2d = (x: Tensor, w: Tensor, b?: Tensor, o: Conv2dOpts = {}) => conv2dAny(x, w, b, { ...o, variant: 'direct' });

type Pad = [number, number, number, number];
const CASES: { name: string; B: number; C: number; H: number; W: number; O: number; K: number; stride: 1 | 2; pad: Pad; bias: boolean }[] = [
  { name: '3x3 s1 p1', B: 2, C: 5, H: 7, W: 9, O: 11, K: 3, stride: 1, pad: [1, 1, 1, 1], bias: true },
  { name: '3x3 s2 pad(0,1,0,1)', B: 1, C: 3, H: 9, W: 6, O: 17, K: 3, stride: 2, pad: [0, 1, 0, 1], bias: true },
  { name: '3x3 s2 pad(0,1,0,1) even', B: 1, C: 4, H: 8, W: 10, O: 3, K: 3, stride: 2, pad: [0, 1, 0, 1], bias: false },
  { name: '1x1', B: 1, C: 17, H: 5, W: 3, O: 3, K: 1, stride: 1, pad: [0, 0, 0, 0], bias: false },
  { name: '3x3 s1 p1 1 channel, 1 pixel', B: 1, C: 1, H: 1, W: 1, O: 1, K: 3, stride: 1, pad: [1, 1, 1, 1], bias: true },
  { name: '3x3 many pixels', B: 1, C: 2, H: 33, W: 41, O: 9, K: 3, stride: 1, pad: [1, 1, 1, 1], bias: true },
];

describe('conv2d', () => {
  for (const c of CASES)
    for (const wdt of ['f32', 'bf16'] as const)
      test(`${c.name} B=${c.B} C=${c.C} ${c.H}x${c.W} O=${c.O} w=${wdt}`, async () => {
        const g = await getGpu();
        const x = randn(c.B * c.C * c.H * c.W, 1 + c.C, 1);
        const wv = randn(c.O * c.C * c.K * c.K, 2 + c.O, 0.5);
        const bv = randn(c.O, 3, 0.5);
        const xt = g.upload(x, [c.B, c.C, c.H, c.W]);
        const { t: wt, exact } = uploadAs(g, wv, [c.O, c.C, c.K, c.K], wdt);
        const bt = c.bias ? g.upload(bv, [c.O]) : undefined;
        const r = ref.conv2d(x, exact, c.bias ? bv : null, { B: c.B, C: c.C, H: c.H, W: c.W, O: c.O, KH: c.K, KW: c.K }, c.stride, c.pad);
        const y = conv2d(xt, wt, bt, { stride: c.stride, pad: c.pad });
        expect(y.shape).toEqual([c.B, c.O, r.Ho, r.Wo]);
        const got = await g.readF32(y);
        expectClose(`conv2d ${c.name}`, got, r.out, 2e-5, 1e-5);
        // split into blocks of whole planes under a tiny binding limit: bitwise identical
        const limit = Math.max(1024, 256 + 4 * Math.max(c.H * c.W, r.Ho * r.Wo, c.C * c.K * c.K) + 4);
        const y2 = await withBindingLimit(g, limit, async () => g.readF32(conv2d(xt, wt, bt, { stride: c.stride, pad: c.pad })));
        expectClose(`conv2d ${c.name} split (limit ${limit})`, y2, got, 0);
        for (const t of [xt, wt, y, bt]) t?.dispose();
      });

  test('1x1 token-major in/out with residual', async () => {
    const g = await getGpu();
    const B = 2, C = 7, H = 3, W = 5, O = 7, HW = H * W;
    const x = randn(B * C * HW, 11), wv = randn(O * C, 12, 0.5), bv = randn(O, 13), rv = randn(B * O * HW, 14);
    const r = ref.conv2d(x, wv, bv, { B, C, H, W, O, KH: 1, KW: 1 }, 1, [0, 0, 0, 0]).out;
    const xt = g.upload(x, [B, C, H, W]), wt = g.upload(wv, [O, C, 1, 1]), bt = g.upload(bv, [O]);
    // NCHW in -> tokens out
    const tok = conv2d(xt, wt, bt, { outTokens: true });
    expect(tok.shape).toEqual([B, HW, O]);
    expectClose('outTokens', await g.readF32(tok), ref.toTokens(r, B, O, HW), 2e-5, 1e-5);
    // tokens in -> NCHW out, + residual
    const xtok = g.upload(Float32Array.from(ref.toTokens(x, B, C, HW)), [B, HW, C]);
    const rt = g.upload(rv, [B, O, H, W]);
    const y = conv2d(xtok, wt, bt, { inTokens: [H, W], residual: rt });
    expectClose('inTokens + residual', await g.readF32(y), r.map((v, i) => v + rv[i]), 2e-5, 1e-5);
    expect(() => conv2d(xt, g.upload(randn(6, 1), [2, 3, 1, 1]))).toThrow(/channels/);
  });
});

describe('conv2d of the upsampled input (fused nearest 2x)', () => {
  test('B=1 C=5 5x3 -> 10x6, O=9', async () => {
    const g = await getGpu();
    const B = 1, C = 5, H = 5, W = 3, O = 9;
    const x = randn(B * C * H * W, 41), wv = randn(O * C * 9, 42, 0.5), bv = randn(O, 43);
    const xt = g.upload(x, [B, C, H, W]), wt = g.upload(wv, [O, C, 3, 3]), bt = g.upload(bv, [O]);
    const up = ref.upsampleNearest2x(x, B * C, H, W);
    const r = ref.conv2d(up, wv, bv, { B, C, H: 2 * H, W: 2 * W, O, KH: 3, KW: 3 }, 1, [1, 1, 1, 1]);
    const y = conv2d(xt, wt, bt, { pad: [1, 1, 1, 1], upsample2x: true });
    expect(y.shape).toEqual([B, O, 2 * H, 2 * W]);
    const got = await g.readF32(y);
    expectClose('fused upsample conv', got, r.out, 2e-5, 1e-5);
    const u = upsampleNearest2x(xt);
    expectClose('fused == upsample then conv', await g.readF32(conv2d(u, wt, bt, { pad: [1, 1, 1, 1] })), got, 0);
    const y2 = await withBindingLimit(g, 1024, async () => g.readF32(conv2d(xt, wt, bt, { pad: [1, 1, 1, 1], upsample2x: true })));
    expectClose('fused upsample conv split', y2, got, 0);
  });
});

describe('upsampleNearest2x', () => {
  test('[2, 3, 5, 7] and split', async () => {
    const g = await getGpu();
    const x = randn(2 * 3 * 35, 21);
    const xt = g.upload(x, [2, 3, 5, 7]);
    const y = upsampleNearest2x(xt);
    expect(y.shape).toEqual([2, 3, 10, 14]);
    const r = ref.upsampleNearest2x(x, 6, 5, 7);
    expectClose('upsample', await g.readF32(y), r, 0);
    const y2 = await withBindingLimit(g, 1024, async () => g.readF32(upsampleNearest2x(xt)));
    expectClose('upsample split', y2, r, 0);
  });
});

describe('groupNorm', () => {
  const GN = [
    { B: 2, C: 6, G: 3, H: 5, W: 7, affine: true, silu: false },
    { B: 1, C: 4, G: 2, H: 37, W: 41, affine: true, silu: true }, // group of 3034 elements: 3 pieces
    { B: 3, C: 5, G: 5, H: 1, W: 3, affine: false, silu: false },
    { B: 1, C: 32, G: 32, H: 17, W: 3, affine: true, silu: true },
  ];
  for (const c of GN)
    test(`B=${c.B} C=${c.C} G=${c.G} ${c.H}x${c.W} affine=${c.affine} silu=${c.silu}`, async () => {
      const g = await getGpu();
      const HW = c.H * c.W;
      // offset mean so the two-pass variance matters
      const x = randn(c.B * c.C * HW, 31 + c.C, 2).map((v) => v + 3);
      const wv = randn(c.C, 32).map((v) => 1 + 0.3 * v), bv = randn(c.C, 33, 0.2);
      const xt = g.upload(x, [c.B, c.C, c.H, c.W]);
      const wt = c.affine ? g.upload(wv, [c.C]) : undefined, bt = c.affine ? g.upload(bv, [c.C]) : undefined;
      const y = groupNorm(xt, c.G, wt, bt, 1e-6, { silu: c.silu });
      const got = await g.readF32(y);
      const r = ref.groupNorm(x, c.B, c.C, HW, c.G, c.affine ? wv : null, c.affine ? bv : null, 1e-6, c.silu);
      expectClose('groupNorm', got, r, 2e-5, 2e-5);
      const y2 = await withBindingLimit(g, 4096 + 512, async () => g.readF32(groupNorm(xt, c.G, wt, bt, 1e-6, { silu: c.silu })));
      expectClose('groupNorm split', y2, got, 0);
    });
  test('bad groups', async () => {
    const g = await getGpu();
    expect(() => groupNorm(g.upload(randn(12, 1), [1, 6, 2, 1]), 4)).toThrow(/groups do not divide/);
  });
});

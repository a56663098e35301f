import { getGpu, releaseGpu, randn, rng, expectClose, uploadAs, poison, primePoison, withBindingLimit } from './harness.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';
import * as ref from './ref/layout.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { goldenCase } from '../test/util/golden-path.js';
import { concat, slice, chunkLast, permute, pack2x2, unpack2x2, cast, gatherRows } from '../src/ops/layout.js';

afterAll(releaseGpu);

// Layout ops move bits: every comparison is exact (atol = 0).

const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);
const read = async (g: Gpu, t: Tensor) => Array.from(await g.read(t));

describe('concat / slice / chunkLast', () => {
  const cases: [shapes: number[][], dim: number][] = [
    [[[2, 3, 5], [2, 4, 5], [2, 1, 5]], 1],
    [[[3, 17], [1, 17]], 0],
    [[[3, 2, 1], [3, 2, 7]], -1],
    [[[1, 255, 3], [1, 17, 3]], 1], // outer = 1: buffer copies
    [[[5], [1], [17]], 0],
  ];
  for (const [shapes, dim] of cases) {
    test(`concat ${JSON.stringify(shapes)} dim=${dim}`, async () => {
      const g = await getGpu();
      const xs = shapes.map((s, i) => ({ data: randn(numel(s), 10 + i), shape: s }));
      const ts = xs.map((x) => g.upload(x.data, x.shape));
      const d = dim < 0 ? dim + shapes[0].length : dim;
      const outShape = [...shapes[0]];
      outShape[d] = shapes.reduce((s, v) => s + v[d], 0);
      primePoison(g, outShape);
      const y = concat(ts, dim);
      expect(y.shape).toEqual(outShape);
      expectClose('concat', await g.readF32(y), ref.concat(xs, d), 0);
    });
  }

  test('concat i32 and errors', async () => {
    const g = await getGpu();
    const a = Int32Array.from({ length: 6 }, (_, i) => i - 3), b = Int32Array.from({ length: 9 }, (_, i) => 1000 * i);
    const y = concat([g.upload(a, [2, 3], 'i32'), g.upload(b, [3, 3], 'i32')], 0);
    expect(y.dtype).toBe('i32');
    expect(await read(g, y)).toEqual([...a, ...b]);
    expect(() => concat([g.upload(randn(6, 1), [2, 3]), g.upload(randn(8, 1), [2, 4])], 0)).toThrow(/does not match ts\[0\]/);
    expect(() => concat([g.upload(randn(6, 1), [2, 3])], 2)).toThrow(/dim 2 out of range/);
  });

  test('slice on every dim of [3, 5, 17]', async () => {
    const g = await getGpu();
    const shape = [3, 5, 17];
    const x = randn(numel(shape), 3);
    const xt = g.upload(x, shape);
    for (const [dim, start, len] of [[0, 1, 2], [1, 0, 5], [1, 3, 1], [2, 4, 13], [2, 16, 1], [-1, 0, 0]]) {
      const d = dim < 0 ? dim + 3 : dim;
      const s = [...shape];
      s[d] = len;
      primePoison(g, s);
      const y = slice(xt, dim, start, len);
      expect(y.shape).toEqual(s);
      expectClose(`slice dim=${dim} [${start}, +${len})`, await g.readF32(y), ref.slice(x, shape, d, start, len), 0);
    }
    expect(() => slice(xt, 1, 3, 3)).toThrow(/out of bounds for dim 1/);
    // long contiguous runs (≥ 16384 elements, few rows) take the buffer-copy path
    const big = randn(2 * 20000, 8);
    primePoison(g, [2, 16500]);
    const y = slice(g.upload(big, [2, 20000]), 1, 3, 16500);
    expectClose('slice long rows', await g.readF32(y), ref.slice(big, [2, 20000], 1, 3, 16500), 0);
  });

  test('chunkLast [2, 7, 3*17] into 3; [4, 6*5] into 6', async () => {
    const g = await getGpu();
    for (const [shape, n] of [[[2, 7, 51], 3], [[4, 30], 6]] as const) {
      const x = randn(numel([...shape]), 4);
      const xt = g.upload(x, [...shape]);
      const parts = chunkLast(xt, n);
      expect(parts.length).toBe(n);
      const C = shape[shape.length - 1] / n;
      for (let i = 0; i < n; i++)
        expectClose(`chunk ${i}/${n}`, await g.readF32(parts[i]), ref.slice(x, [...shape], shape.length - 1, i * C, C), 0);
    }
    expect(() => chunkLast(g.upload(randn(10, 1), [2, 5]), 3)).toThrow(/not divisible by 3/);
  });

  test('split paths over maxBindingBytes (rows of 51 / 17 floats)', async () => {
    const g = await getGpu();
    const rows = 300, shape = [rows, 51];
    const x = randn(numel(shape), 5);
    const xt = g.upload(x, shape), yt = g.upload(randn(rows * 17, 6), [rows, 17]);
    await withBindingLimit(g, 16384, async () => {
      const d0 = g.dispatchCount;
      // src rows 204 B, dst rows 68 B: chunks of the 80 rows that fit (16 KiB), in steps of 4 rows at a 16- or
      // 32-byte binding alignment, of 64 at 256 (lavapipe: 16) → 4 or 5 chunks × 3 slices
      const parts = chunkLast(xt, 3);
      expect(g.dispatchCount - d0).toBe(3 * (g.storageAlign === 256 ? 5 : 4));
      for (let i = 0; i < 3; i++) expectClose(`split chunk ${i}`, await g.readF32(parts[i]), ref.slice(x, shape, 1, i * 17, 17), 0);
      const y = await g.readF32(yt);
      expectClose('split concat', await g.readF32(concat([xt, yt], 1)), ref.concat([{ data: x, shape }, { data: y, shape: [rows, 17] }], 1), 0);
      const p = permute(xt.reshape([rows, 3, 17]), [0, 2, 1]);
      expectClose('split permute', await g.readF32(p), ref.permute(x, [rows, 3, 17], [0, 2, 1]), 0);
    });
    // permutes that move the leading dim: blocks of (output rows × input rows)
    await withBindingLimit(g, 32768, async () => {
      for (const [shape, perm] of [[[640, 40], [1, 0]], [[64, 5, 96], [2, 0, 1]], [[1, 96, 5, 64], [0, 3, 2, 1]]]) {
        const x = randn(numel(shape), 12);
        const d0 = g.dispatchCount;
        primePoison(g, perm.map((p) => shape[p]));
        const y = permute(g.upload(x, shape), perm);
        expect(g.dispatchCount - d0).toBeGreaterThan(4);
        expectClose(`split permute ${JSON.stringify(shape)} ${JSON.stringify(perm)}`, await g.readF32(y), ref.permute(x, shape, perm), 0);
      }
    });
    // rows so wide that 64 of them exceed the limit: one buffer copy per row
    await withBindingLimit(g, 4096, async () => {
      const a = randn(3 * 100, 1), b = randn(3 * 50, 2);
      const y = concat([g.upload(a, [3, 100]), g.upload(b, [3, 50])], 1);
      expectClose('wide-row concat', await g.readF32(y), ref.concat([{ data: a, shape: [3, 100] }, { data: b, shape: [3, 50] }], 1), 0);
    });
  });
});

describe('permute', () => {
  const cases: [number[], number[]][] = [
    [[3, 17], [1, 0]],
    [[2, 3, 5], [2, 0, 1]],
    [[1, 5, 1, 3], [3, 1, 0, 2]],
    [[2, 3, 4, 5, 3], [4, 2, 0, 3, 1]],
    [[2, 3, 2, 5, 2, 3], [5, 0, 4, 1, 3, 2]],
    [[4, 255], [0, 1]],
    [[7, 1, 3, 2, 2, 3, 1], [6, 5, 0, 4, 3, 2, 1]], // rank 7 with unit dims: reduces to ≤ 6
  ];
  for (const [shape, perm] of cases) {
    test(`${JSON.stringify(shape)} perm ${JSON.stringify(perm)}`, async () => {
      const g = await getGpu();
      const x = randn(numel(shape), numel(shape) + 1);
      primePoison(g, perm.map((p) => shape[p]));
      const y = permute(g.upload(x, shape), perm);
      expect(y.shape).toEqual(perm.map((p) => shape[p]));
      expectClose('permute', await g.readF32(y), ref.permute(x, shape, perm), 0);
    });
  }
  test('u32 and bad perm', async () => {
    const g = await getGpu();
    const x = Uint32Array.from({ length: 15 }, (_, i) => 0xfffffff0 + i);
    const y = permute(g.upload(x, [3, 5], 'u32'), [1, 0]);
    expect(await read(g, y)).toEqual(Array.from(ref.permute(x, [3, 5], [1, 0])));
    expect(() => permute(g.upload(x, [3, 5], 'u32'), [0, 0])).toThrow(/not a permutation/);
    expect(() => permute(uploadAs(g, randn(4, 1), [2, 2], 'bf16').t, [1, 0])).toThrow(/only f32\/i32\/u32/);
  });
});

describe('pack2x2 / unpack2x2', () => {
  for (const [B, C, H, W] of [[1, 16, 6, 10], [2, 3, 2, 4], [1, 1, 34, 2]]) {
    test(`[${B}, ${C}, ${H}, ${W}]`, async () => {
      const g = await getGpu();
      const x = randn(B * C * H * W, H * W + C);
      const xt = g.upload(x, [B, C, H, W]);
      primePoison(g, [B, (H * W) / 4, C * 4]);
      const tok = pack2x2(xt);
      expect(tok.shape).toEqual([B, (H / 2) * (W / 2), C * 4]);
      expectClose('pack2x2', await g.readF32(tok), ref.pack2x2(x, B, C, H, W), 0);
      primePoison(g, [B, C, H, W]);
      const back = unpack2x2(tok, H / 2, W / 2);
      expect(back.shape).toEqual([B, C, H, W]);
      expectClose('unpack2x2(pack2x2(x))', await g.readF32(back), x, 0);
    });
  }
  test('golden dit_tiny: in.img = [pack(latent_noisy), pack(latent_ref)] per batch row', async () => {
    const g = await getGpu();
    const dir = goldenCase('dit_tiny');
    const tol = (JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).tolerance as { match: string; atol: number; rtol: number }[])
      .find((t) => t.match === 'in.*')!;
    const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    try {
      const [noisy, refLat, img] = await Promise.all(['in.latent_noisy', 'in.latent_ref', 'in.img'].map((k) => io.readF32(k)));
      const shape = [1, 16, 8, 12];
      const tokens = concat([pack2x2(g.upload(noisy, shape)), pack2x2(g.upload(refLat, shape))], 1); // [1, 48, 64]
      const got = await g.readF32(tokens);
      for (const b of [0, 1]) expectClose(`in.img[${b}]`, got, img.subarray(b * 48 * 64, (b + 1) * 48 * 64), tol.atol, tol.rtol);
    } finally {
      await io.close();
    }
  });
  test('errors', async () => {
    const g = await getGpu();
    expect(() => pack2x2(g.upload(randn(6, 1), [1, 1, 2, 3]))).toThrow(/even H and W/);
    expect(() => unpack2x2(g.upload(randn(24, 1), [1, 6, 4]), 2, 2)).toThrow(/must be \[B, 2\*2, C\*4\]/);
  });
});

describe('cast', () => {
  for (const n of [1, 3, 17, 255, 4099]) {
    test(`bf16/f16 -> f32 n=${n}`, async () => {
      const g = await getGpu();
      for (const dt of ['bf16', 'f16'] as const) {
        const { t, exact } = uploadAs(g, randn(n, n + 7, 100), [n], dt);
        primePoison(g, [n]);
        const y = cast(t, 'f32');
        expect(y.dtype).toBe('f32');
        expectClose(`cast ${dt} n=${n}`, await g.readF32(y), exact, 0);
      }
    });
  }
  test('split path and f32 copy', async () => {
    const g = await getGpu();
    const { t, exact } = uploadAs(g, randn(4099, 2), [4099], 'bf16');
    await withBindingLimit(g, 1024, async () => {
      const d0 = g.dispatchCount;
      const y = cast(t.reshape([4099]), 'f32'); // 256-element chunks → 17 dispatches
      expect(g.dispatchCount - d0).toBe(17);
      expectClose('cast split', await g.readF32(y), exact, 0);
    });
    const f = randn(17, 3);
    expectClose('cast f32', await g.readF32(cast(g.upload(f, [17]), 'f32')), f, 0);
  });
});

describe('gatherRows', () => {
  for (const [N, D, dt] of [[5, 3, 'f32'], [17, 17, 'bf16'], [40, 255, 'f16'], [1, 1, 'bf16']] as const) {
    test(`table [${N}, ${D}] ${dt}`, async () => {
      const g = await getGpu();
      const { t, exact } = uploadAs(g, randn(N * D, N + D, 3), [N, D], dt);
      const r = rng(N);
      const idx = Int32Array.from({ length: 23 }, () => Math.floor(r() * N));
      primePoison(g, [23, D]);
      expectClose(`gather ${dt}`, await g.readF32(gatherRows(t, idx)), ref.gatherRows(exact, D, idx), 0);
    });
  }
  test('split table and output; bad index', async () => {
    const g = await getGpu();
    const N = 500, D = 17;
    const { t, exact } = uploadAs(g, randn(N * D, 9), [N, D], 'bf16');
    const r = rng(3);
    const idx = Int32Array.from({ length: 150 }, () => Math.floor(r() * N));
    await withBindingLimit(g, 8192, async () => {
      primePoison(g, [150, D]);
      expectClose('gather split', await g.readF32(gatherRows(t, idx)), ref.gatherRows(exact, D, idx), 0);
    });
    expect(() => gatherRows(t, Int32Array.from([0, 500]))).toThrow(/idx\[1\] = 500 out of range/);
    expect(gatherRows(t, new Int32Array(0)).shape).toEqual([0, D]);
  });
});

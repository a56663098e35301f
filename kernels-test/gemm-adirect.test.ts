/**
 * gemm-sgmat.wgsl with A read straight from storage (ADIRECT: f16 x loaded into the left fragments with
 * subgroupMatrixLoad, only W staged; plan: src/ops/plan-gemm.ts sgmatDirect) vs the f64 reference
 * (kernels-test/ref/gemm.ts) with the f16-operand bounds of the other subgroup-matrix tests: odd M (1 and 3
 * fall back to staging, 17 and 255 end in a clamped partial row block), K a multiple of 8 but not of the
 * k-tile, N not a multiple of any tile; bf16 / f16 / f32 / fp8 / q8 / q4 weights, the f16→f16 config, an f16
 * output into a column window, a weight beyond f16 (f32 recompute); and the fallbacks: K % 8 != 0, a
 * misaligned x view, fewer rows than a fragment; `step1x tune`'s candidates with and without it, and that
 * cache entries written before it (no `adirect` field) still load.
 * Runs where f16 activation storage can (the trixie root: scripts/sgmat-env.sh with
 * STEP1X_KERNELS=subgroup-matrix); elsewhere it says so and returns, and under STEP1X_KERNELS=subgroup-matrix
 * an adapter that cannot is an error, not a skip. Few pipelines, small N and K (CI runs on 2 loaded cores).
 */
import { getGpu, releaseGpu, randn, uploadAs, uploadPacked, expectWithin, withBindingLimit } from './harness.js';
import * as ref from './ref/gemm.js';
import { linear, type Activation } from '../src/ops/linear.js';
import { linearPacked } from '../src/ops/linear-quant.js';
import { canStoreF16 } from '../src/ops/act-dtype.js';
import { planGemm, sgmatDirect, overflowCount, setTunedTiles, gemmConfig, DEFAULT_SGMAT_TILE, type SgmatTile } from '../src/ops/plan-gemm.js';
import type { PackedFormat } from '../src/io/quant.js';
import { candidates, loadTuned, adapterKey, shapeClass } from '../src/ops/tune.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu, Kernel } from '../src/runtime/gpu.js';
import type { DType, Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

async function f16Gpu(what: string): Promise<Gpu | null> {
  const g = await getGpu();
  if (canStoreF16(g)) return g;
  const why = `adapter "${g.caps.description}" (kernels ${g.kernels}, precision ${g.precision}) cannot store activations in f16`;
  if (process.env.STEP1X_KERNELS === 'subgroup-matrix') throw new Error(`gemm-adirect: ${what}: ${why}, in the environment that must run it`);
  console.log(`gemm-adirect: ${what} not run here: ${why} (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

/** Run body with tile t forced (when given), recording the defines of every gemm-sgmat dispatch. */
async function recording(g: Gpu, t: SgmatTile | undefined, body: () => Promise<void>): Promise<Kernel['defines'][]> {
  const seen: Kernel['defines'][] = [];
  const orig = g.dispatch;
  g.dispatch = (k: Kernel) => {
    if (k.file === 'gemm-sgmat.wgsl') seen.push(k.defines);
    orig.call(g, k);
  };
  if (t) setTunedTiles(g, { lookup: (k) => (k === 'subgroup-matrix' ? t : undefined) });
  try {
    await body();
  } finally {
    if (t) setTunedTiles(g, undefined);
    g.dispatch = orig;
  }
  return seen;
}
const direct = (seen: Kernel['defines'][]) => seen.filter((d) => d?.ADIRECT === true).length;

/** A NaN-filled tensor of storage dtype dt, so skipped elements fail. */
function poisoned(g: Gpu, shape: number[], dt: DType): Tensor {
  const t = g.empty(shape, dt);
  g.writeInto(t, dt === 'f16' ? new Uint16Array(t.numel).fill(0x7e00) : new Float32Array(t.numel).fill(NaN));
  return t;
}

interface Case { M: number; K: number; N: number; wdt?: DType; bdt?: DType; act?: Activation; odt?: 'f32' | 'f16'; col?: number; chunk?: number; xOff?: number; big?: number }

/**
 * linear(x f16 [M, K], w [N, K]) into out [M, col + N + 3] at column `col` (or [M, N]); x is a view `xOff`
 * elements into a larger f16 buffer. `big`: one weight set beyond the f16 range (the tile is recomputed in f32).
 */
async function gemmCase(g: Gpu, c: Case): Promise<void> {
  const { M, K, N, wdt = 'bf16', act, odt = 'f32', col = 0, xOff = 0 } = c;
  const seed = M * 7 + K * 3 + N;
  const host = uploadAs(g, randn(xOff + M * K, seed + 1), [xOff + M * K], 'f16');
  const exact = host.exact.subarray(xOff);
  const view = host.t.rows(xOff, M * K);
  const x = view.reshape([M, K]);
  view.dispose();
  const wv = randn(N * K, seed + 2);
  if (c.big) wv[K + 1] = c.big;
  const w = uploadAs(g, wv, [N, K], wdt);
  const b = c.bdt ? uploadAs(g, randn(N, seed + 3), [N], c.bdt) : null;
  const D = col ? col + N + 3 : N;
  const out = poisoned(g, [M, D], odt);
  linear(x, w.t, b?.t, { act, out, outCol: col || undefined, variant: 'subgroup-matrix' });
  const all = await g.readF32(out);
  const got = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    got.set(all.subarray(m * D + col, m * D + col + N), m * N);
    for (let n = 0; n < D; n++) if ((n < col || n >= col + N) && !Number.isNaN(all[m * D + n])) throw new Error(`column ${n} of row ${m} outside the window [${col}, ${col + N}) was written`);
  }
  const want = ref.linear(exact, w.exact, M, N, K, b?.exact, act);
  const bound = c.chunk ? ref.f16ResultBound(exact, w.exact, M, N, K, c.chunk, act) : ref.f16Bound(exact, w.exact, M, N, K, act);
  if (odt === 'f16') for (let i = 0; i < bound.length; i++) bound[i] += 2 ** -11 * (Math.abs(want[i]) + bound[i]) + 2 ** -25;
  expectWithin(`gemm x=f16@${xOff} M=${M} K=${K} N=${N} w=${wdt} b=${c.bdt} act=${act} out=${odt}@${col}`, got, want, bound);
  for (const t of [x, host.t, w.t, b?.t, out]) t?.dispose();
}

describe('gemm-sgmat: A straight from f16 storage (ADIRECT)', () => {
  test('the plan: f16 x, K % 8 == 0 and M >= SM; chunks need 16-byte aligned rows', async () => {
    const g = await f16Gpu('plan');
    if (!g) return;
    const sm = gemmConfig(g.caps)!.M;
    const s = { M: 255, K: 40, N: 19, wdt: 'bf16' as DType, xdt: 'f16' as DType };
    const p = planGemm(g, s, 'subgroup-matrix')!;
    expect(p.direct).toBeDefined();
    expect(p.describe).toMatch(/A from storage/);
    expect(sgmatDirect(p, 40, 8, 255)).toMatchObject({ ADIRECT: true });
    expect(sgmatDirect(p, 40, 4, 255)).toBeNull(); // a row start 8 bytes off 16
    expect(sgmatDirect(p, 36, 0, 255)).toBeNull(); // K % 8 != 0
    expect(sgmatDirect(p, 40, 0, sm - 1)).toBeNull(); // fewer rows than a fragment
    for (const t of [{ ...s, xdt: 'f32' as DType }, { ...s, K: 36 }, { ...s, M: sm - 1 }]) {
      const q = planGemm(g, t, 'subgroup-matrix')!;
      expect([t, q.direct, /A from storage/.test(q.describe)]).toEqual([t, undefined, false]);
    }
    setTunedTiles(g, { lookup: () => ({ ...DEFAULT_SGMAT_TILE, adirect: false }) });
    try {
      expect(planGemm(g, s, 'subgroup-matrix')!.direct).toBeUndefined(); // the tuner's staged candidate
    } finally {
      setTunedTiles(g, undefined);
    }
  });

  test('tune: f16-x candidates with and without it; cache entries from before (no adirect field) stay valid', async () => {
    const g = await f16Gpu('tune candidates');
    if (!g) return;
    const f32 = candidates(g, 'subgroup-matrix') as SgmatTile[];
    const f16 = candidates(g, 'subgroup-matrix', 'f16') as SgmatTile[];
    expect(f32.every((t) => !('adirect' in t))).toBe(true);
    expect(f16).toEqual(f32.flatMap((t) => [t, { ...t, adirect: false }]));
    const s = { M: 255, K: 40, N: 19, wdt: 'bf16' as DType, xdt: 'f16' as DType };
    const dir = mkdtempSync(join(tmpdir(), 'step1x-adirect-'));
    const saved = process.env.STEP1X_TUNE_CACHE;
    process.env.STEP1X_TUNE_CACHE = join(dir, 'tune.json');
    try {
      for (const [entry, direct] of [[{ ...f32[0] }, true], [{ ...f32[0], adirect: false }, false]] as const) {
        writeFileSync(process.env.STEP1X_TUNE_CACHE, JSON.stringify({ [adapterKey(g)]: { [shapeClass('subgroup-matrix', s)]: entry } }));
        expect(loadTuned(g)).toBe(1);
        expect([entry, !!planGemm(g, s, 'subgroup-matrix')!.direct]).toEqual([entry, direct]);
      }
    } finally {
      setTunedTiles(g, undefined);
      if (saved === undefined) delete process.env.STEP1X_TUNE_CACHE;
      else process.env.STEP1X_TUNE_CACHE = saved;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('odd shapes, bf16 weights: direct from M = SM on, staged below', async () => {
    const g = await f16Gpu('odd shapes');
    if (!g) return;
    const sm = gemmConfig(g.caps)!.M;
    for (const M of [1, 3, 17, 255]) {
      const seen = await recording(g, undefined, () => gemmCase(g, { M, K: 40, N: 19 }));
      expect([M, seen.length > 0, direct(seen) === seen.length]).toEqual([M, true, M >= sm]);
      if (M < sm) expect(direct(seen)).toBe(0);
    }
  });

  test('f16 / f32 weights, bias and activations, f16 output into a column window, x at an offset', async () => {
    const g = await f16Gpu('dtypes');
    if (!g) return;
    const seen = await recording(g, undefined, async () => {
      await gemmCase(g, { M: 17, K: 48, N: 21, wdt: 'f16', bdt: 'f32', act: 'gelu_tanh', odt: 'f16', col: 8, xOff: 48 });
      await gemmCase(g, { M: 255, K: 24, N: 35, wdt: 'f32', bdt: 'bf16', act: 'silu', xOff: 8 });
    });
    expect(direct(seen)).toBe(seen.length);
    expect(seen.some((d) => d?.O16 === true)).toBe(true);
  });

  test('f16→f16 config: f16 k-chunks added into f32', async () => {
    const g = await f16Gpu('f16→f16 config');
    if (!g) return;
    if (!gemmConfig(g.caps, 'f16')) throw new Error(`adapter "${g.caps.description}" reports no f16→f16 config (Mesa 26 lavapipe does)`);
    const t: SgmatTile = { ...DEFAULT_SGMAT_TILE, res: 'f16', flush: 2 };
    const seen = await recording(g, t, async () => {
      for (const M of [17, 255]) await gemmCase(g, { M, K: 136, N: 19, chunk: 2 * t.bk });
    });
    expect(seen.every((d) => d?.RES === 'f16' && d?.ADIRECT === true)).toBe(true);
  });

  test('quantized weights (fp8, q8, q4) on a 64-deep k-tile', async () => {
    const g = await f16Gpu('quantized');
    if (!g) return;
    const t: SgmatTile = { sgm: 2, sgn: 2, pm: 1, pn: 1, bk: 64 };
    const seen = await recording(g, t, async () => {
      for (const [fmt, M, K, N] of [['fp8_e4m3', 17, 40, 19], ['q8', 255, 96, 21], ['q4', 17, 96, 35]] as [PackedFormat, number, number, number][]) {
        const { w, exact } = uploadPacked(g, randn(N * K, K + N), N, K, fmt);
        const x = uploadAs(g, randn(M * K, M + K), [M, K], 'f16');
        const out = poisoned(g, [M, N], 'f32');
        linearPacked(x.t, w, undefined, { out });
        const got = await g.readF32(out);
        expectWithin(`${fmt} x=f16 M=${M} K=${K} N=${N}`, got, ref.linear(x.exact, exact, M, N, K), ref.f16Bound(x.exact, exact, M, N, K));
        for (const tt of [w.data, w.scales, x.t, out]) tt?.dispose();
      }
    });
    expect(seen.length).toBe(3);
    expect(seen.every((d) => d?.ADIRECT === true && d?.QUANT === true && d?.BK === 64)).toBe(true);
  });

  test('a weight beyond the f16 range: the tile is recomputed in f32', async () => {
    const g = await f16Gpu('overflow');
    if (!g) return;
    const before = await overflowCount(g);
    const seen = await recording(g, undefined, () => gemmCase(g, { M: 17, K: 40, N: 19, big: 1e5 }));
    expect(direct(seen)).toBe(seen.length);
    expect(await overflowCount(g)).toBeGreaterThan(before);
  });

  test('fallbacks to staging: K % 8 != 0; a split whose chunks start 8 bytes off 16', async () => {
    const g = await f16Gpu('fallbacks');
    if (!g) return;
    const odd = await recording(g, undefined, () => gemmCase(g, { M: 17, K: 36, N: 19 }));
    expect([odd.length > 0, direct(odd)]).toEqual([true, 0]);
    // x 4 elements into its buffer: the first chunk is bound through an aligned copy (direct), later ones
    // start on a 256-byte boundary with x_off = 4 mod 8 (staged)
    const split = await recording(g, undefined, () => withBindingLimit(g, 1024, () => gemmCase(g, { M: 255, K: 40, N: 19, xOff: 4 })));
    expect(direct(split)).toBeGreaterThan(0);
    expect(direct(split)).toBeLessThan(split.length);
  });
});

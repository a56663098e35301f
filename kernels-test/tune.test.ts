/**
 * Autotune (src/ops/tune.ts) on whatever adapter runs the tests, with the workgroup-tiled family forced
 * (--kernels tiled) so there is something to tune on lavapipe too: winners are cached per adapter and
 * shape class, reloaded by the plan (and still correct against the f64 reference), and a corrupt cache or
 * an invalid tile in it is ignored, never trusted.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu, randn, expectClose } from './harness.js';
import * as ref from './ref/gemm.js';
import { tune, tuneCacheTiles, loadTuned, adapterKey, shapeClass, candidates } from '../src/ops/tune.js';
import { planGemm } from '../src/ops/plan-gemm.js';
import { linear } from '../src/ops/linear.js';

/** The tiled family, forced (the workgroup tiles are what is tuned), and the tune cache's tiles as the CLI loads them. */
const TILED = { kernels: 'tiled' as const, tiles: tuneCacheTiles };

const dir = mkdtempSync(join(tmpdir(), 'step1x-tune-'));
const cache = join(dir, 'tune.json');
const savedEnv = process.env.STEP1X_TUNE_CACHE;
beforeAll(() => {
  process.env.STEP1X_TUNE_CACHE = cache;
});
afterAll(() => {
  releaseGpu();
  if (savedEnv === undefined) delete process.env.STEP1X_TUNE_CACHE;
  else process.env.STEP1X_TUNE_CACHE = savedEnv;
});

const S = { M: 33, K: 20, N: 17, wdt: 'f32' as const };

test('tune caches the winner per adapter and shape class; the plan reuses it', async () => {
  const g = await getGpu(TILED);
  expect(g.kernels).toBe('tiled');
  // two candidates keep the compile time down on lavapipe (every tile is its own pipeline)
  const res = await tune(g, [S, { ...S, M: 40 }], { reps: 1, maxCandidates: 2 });
  expect(res).toHaveLength(1); // M 33 and 40 share a class: timed once
  expect(res[0].kind).toBe('workgroup');
  expect(res[0].tried.map((t) => t.tile)).toEqual(candidates(g, 'workgroup').slice(0, 2));
  const file = JSON.parse(readFileSync(cache, 'utf8'));
  expect(file[adapterKey(g)][shapeClass('workgroup', S)]).toEqual(res[0].best);
  expect(loadTuned(g)).toBe(1);
  const plan = planGemm(g, S)!;
  expect(plan.bm).toBe((res[0].best as { bm: number }).bm);
  const x = randn(S.M * S.K, 1), w = randn(S.N * S.K, 2);
  const out = linear(g.upload(x, [S.M, S.K]), g.upload(w, [S.N, S.K]));
  expectClose('tuned workgroup GEMM', await g.readF32(out), ref.linear(x, w, S.M, S.N, S.K), 2e-6 + 1e-7 * S.K, 1e-6);
});

test('a corrupt cache or an invalid cached tile is ignored', async () => {
  const g = await getGpu(TILED);
  writeFileSync(cache, '{ not json');
  expect(loadTuned(g)).toBe(0);
  writeFileSync(cache, JSON.stringify({ [adapterKey(g)]: { [shapeClass('workgroup', S)]: { bm: 30, bn: 64, bk: 16, tm: 4, tn: 4 } } }));
  expect(loadTuned(g)).toBe(0); // 30 is not a multiple of tm = 4
  expect(planGemm(g, S)!.bm).toBe(64); // the default
});

/**
 * Issue 21, tune cache as data (src/ops/tune.ts): validated on read, a bad entry named and ignored (never
 * reaching the kernels as a Dawn validation error), a FIFO / device / directory never blocks or floods
 * memory, `tune` never overwrites a file that is not a tune cache (a notes file, a top-level `[]`), and a
 * relative XDG_CACHE_HOME is ignored as the XDG spec says.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { adapterKey, loadTuned, tuneCacheTiles, shapeClass, tune, tuneCachePath } from '../src/ops/tune.js';
import { planGemm } from '../src/ops/plan-gemm.js';
import { ExitCode, Step1xError } from '../src/errors.js';

/** The tiled family, forced (the workgroup tiles are what is tuned), and the tune cache's tiles as the CLI loads them. */
const TILED = { kernels: 'tiled' as const, tiles: tuneCacheTiles };

const dir = mkdtempSync(join(tmpdir(), 'step1x-tc-'));
const saved = { c: process.env.STEP1X_TUNE_CACHE, x: process.env.XDG_CACHE_HOME };
const S = { M: 33, K: 20, N: 17, wdt: 'f32' as const };
let warnings: string[] = [];
const realWrite = process.stderr.write.bind(process.stderr);

beforeEach(() => {
  warnings = [];
  process.stderr.write = ((s: string) => (warnings.push(String(s)), true)) as typeof process.stderr.write;
});
afterEach(() => void (process.stderr.write = realWrite));
afterAll(() => {
  releaseGpu();
  for (const [k, v] of [['STEP1X_TUNE_CACHE', saved.c], ['XDG_CACHE_HOME', saved.x]] as const) if (v === undefined) delete process.env[k];
    else process.env[k] = v;
});

test('null, bk: 0, huge and string entries: each named and ignored, the plan keeps its default', async () => {
  const g = await getGpu(TILED);
  const cache = join(dir, 'bad.json');
  process.env.STEP1X_TUNE_CACHE = cache;
  const cls = shapeClass('workgroup', S);
  for (const t of [null, { bm: 64, bn: 64, bk: 0, tm: 4, tn: 4 }, { bm: 4096, bn: 4096, bk: 4096, tm: 64, tn: 64 }, 'fast']) {
    writeFileSync(cache, JSON.stringify({ [adapterKey(g)]: { [cls]: t } }));
    expect(loadTuned(g)).toBe(0);
    expect(planGemm(g, S)!.bm).toBe(64);
  }
  const lines = warnings.join('');
  expect(lines).toContain(`tune cache ${cache}: entry "${cls}" ignored (null`);
  expect(lines).toMatch(/"bk":0,.*is not a tile for this device/);
  expect(lines).toMatch(/"fast" is not a tile/);
});

test('a FIFO, /dev/zero, a directory or a top-level [] as the cache: ignored at once with a warning', async () => {
  const g = await getGpu(TILED);
  const fifo = join(dir, 'fifo.json');
  execFileSync('mkfifo', [fifo]);
  const d = join(dir, 'adir');
  mkdirSync(d);
  const arr = join(dir, 'arr.json');
  writeFileSync(arr, '[]');
  for (const p of [fifo, '/dev/zero', d, arr]) {
    process.env.STEP1X_TUNE_CACHE = p;
    expect(loadTuned(g)).toBe(0);
  }
  expect(warnings.join('')).toMatch(/fifo\.json ignored: not a regular file/);
  expect(warnings.join('')).toMatch(/arr\.json ignored: not a JSON object of adapters/);
});

test('tune never overwrites a file that is not a tune cache (exit 7, the file intact)', async () => {
  const g = await getGpu(TILED);
  for (const [name, text] of [['notes.txt', 'my notes, not JSON\n'], ['arr.json', '[]']]) {
    const p = join(dir, `w-${name}`);
    writeFileSync(p, text);
    process.env.STEP1X_TUNE_CACHE = p;
    let code: number | undefined;
    try {
      await tune(g, [S], { reps: 1, maxCandidates: 1 });
    } catch (e) {
      code = (e as Step1xError).code;
      expect((e as Error).message).toMatch(/not a step1x tune cache, refusing to overwrite it/);
    }
    expect(code).toBe(ExitCode.OUTPUT);
    expect(readFileSync(p, 'utf8')).toBe(text);
  }
});

test('a relative XDG_CACHE_HOME is ignored', () => {
  delete process.env.STEP1X_TUNE_CACHE;
  process.env.XDG_CACHE_HOME = 'relative/cache';
  expect(tuneCachePath()).toBe(join(homedir(), '.cache', 'step1x', 'tune.json'));
  process.env.XDG_CACHE_HOME = '/abs/cache';
  expect(tuneCachePath()).toBe('/abs/cache/step1x/tune.json');
});

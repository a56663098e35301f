/**
 * `step1x batch` for CI jobs (src/cli/batch.ts).
 * In-process, with an edit function that really writes files (the pipeline itself is tested elsewhere):
 * collisions refused up front, shards partition the manifest, a bad entry is reported and skipped,
 * --fail-fast and fatal errors stop, --skip-existing after an interrupted batch completes the rest
 * without redoing finished images.
 * Then the built CLI on the tiny model: a corrupt image among good ones, `--shard 0/2` + `--shard 1/2`
 * writing every output exactly once, `--report` JSON lines, `--skip-existing`, a created output
 * directory, colliding names refused before any work.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../src/errors.js';
import { parseShard, planBatch, runBatch, type BatchEntry, type BatchRecord } from '../src/cli/batch.js';
import type { Reporter } from '../src/cli/progress.js';
import type { EditResult } from '../src/pipeline/edit-pipeline.js';
import { behaviour as officialBehaviour } from '../src/pipeline/official.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { encodePng, readImage } from '../src/io/image.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';

const lines: string[] = [];
const rep: Reporter = { update() {}, progress() {}, done: (t) => void lines.push(t), fail: (t) => void lines.push(`FAIL ${t}`), stop() {} };

const fakeResult = (): EditResult => ({
  image: { width: 1, height: 1, data: new Uint8Array(3) }, task: 'edit', version: 'v1.1', behaviour: officialBehaviour('current'),
  workingSize: [16, 16], seed: 42, timings: { total: 0.01 }, peakGpuBytes: 0, parameters: {},
});

function manifest(n: number): [string, string][] {
  return Array.from({ length: n }, (_, i) => [`img${i}.png`, `edit ${i}`]);
}

test('colliding output names are refused before any work (exact, case-insensitive, across directories)', () => {
  const o = { inputDir: '/in', outputDir: '/out' };
  expect(() => planBatch([['a.png', 'x'], ['a.jpg', 'y'], ['b.png', 'z']], o)).toThrow(/nothing was run: "a\.png" and "a\.jpg" would all write a\.png/);
  expect(() => planBatch([['A.png', 'x'], ['a.webp', 'y']], o)).toThrow(/"A\.png" and "a\.webp" would all write/);
  expect(() => planBatch([['x/a.png', 'x'], ['y/a.png', 'y']], o)).toThrow(/"x\/a\.png" and "y\/a\.png"/);
  try {
    planBatch([['a.png', 'x'], ['a.jpg', 'y']], o);
  } catch (e) {
    expect((e as Step1xError).code).toBe(ExitCode.USAGE);
  }
  expect(planBatch([['a.png', 'x'], ['b.jpg', 'y']], { ...o, ext: '.webp' }).run.map((e) => e.output)).toEqual(['/out/a.webp', '/out/b.webp']);
});

test('--shard I/N partitions the manifest (every entry exactly once); auto/N reads JOB_COMPLETION_INDEX', () => {
  const m = manifest(11);
  const seen: number[] = [];
  for (let i = 0; i < 3; i++) seen.push(...planBatch(m, { inputDir: 'i', outputDir: 'o', shard: { index: i, count: 3 } }).run.map((e) => e.index));
  expect(seen.sort((a, b) => a - b)).toEqual(m.map((_, i) => i));
  expect(planBatch(m, { inputDir: 'i', outputDir: 'o', shard: { index: 1, count: 3 } }).run.map((e) => e.index)).toEqual([1, 4, 7, 10]);
  expect(parseShard('1/4')).toEqual({ index: 1, count: 4 });
  expect(parseShard('auto/4', { JOB_COMPLETION_INDEX: '3' })).toEqual({ index: 3, count: 4 });
  expect(() => parseShard('auto/4', {})).toThrow(/JOB_COMPLETION_INDEX/);
  for (const bad of ['4/4', '1', '-1/2', 'a/b', '0/0']) expect(() => parseShard(bad)).toThrow(/--shard/);
});

test('a bad entry is reported and skipped, the rest written; --fail-fast and fatal errors stop', async () => {
  const plan = planBatch(manifest(4), { inputDir: 'i', outputDir: 'o' });
  const records: BatchRecord[] = [];
  const edit = async (e: BatchEntry) => {
    if (e.index === 1) throw new Step1xError(`${e.input}: not a readable image`, ExitCode.INPUT);
    return fakeResult();
  };
  const r = await runBatch(plan, edit, { rep, onRecord: (x) => void records.push(x) });
  expect(r.ok).toBe(3);
  expect(r.failed.map((f) => [f.index, f.exit_code])).toEqual([[1, ExitCode.INPUT]]);
  expect(records.map((x) => x.status)).toEqual(['ok', 'failed', 'ok', 'ok']);
  expect(records[1].error).toMatch(/not a readable image/);
  const calls: number[] = [];
  await expect(runBatch(plan, async (e) => (calls.push(e.index), edit(e)), { rep, failFast: true })).rejects.toThrow(/not a readable image/);
  expect(calls).toEqual([0, 1]);
  const fatal: number[] = [];
  const weights = async (e: BatchEntry) => {
    fatal.push(e.index);
    throw new Step1xError('VAE checkpoint is damaged', ExitCode.WEIGHTS);
  };
  await expect(runBatch(plan, weights, { rep })).rejects.toThrow(/damaged/);
  expect(fatal).toEqual([0]);
});

test('--skip-existing after an interrupted batch completes the rest without redoing finished images', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-resume-'));
  const m = manifest(5);
  const made: number[] = [];
  const edit = (stopAt: number) => async (e: BatchEntry) => {
    if (e.index === stopAt) throw new Step1xError('interrupted (SIGINT)', ExitCode.INTERRUPTED);
    made.push(e.index);
    writeFileSync(e.output, encodePng({ width: 1, height: 1, data: Uint8Array.of(e.index, 0, 0) }));
    return fakeResult();
  };
  await expect(runBatch(planBatch(m, { inputDir: dir, outputDir: dir }), edit(3), { rep })).rejects.toThrow(/interrupted/);
  expect(made).toEqual([0, 1, 2]);
  const before = [0, 1, 2].map((i) => statSync(join(dir, `img${i}.png`)).mtimeMs);
  const plan = planBatch(m, { inputDir: dir, outputDir: dir, skipExisting: true });
  expect(plan.existing.map((e) => e.index)).toEqual([0, 1, 2]);
  const records: BatchRecord[] = [];
  const r = await runBatch(plan, edit(-1), { rep, onRecord: (x) => void records.push(x) });
  expect(made).toEqual([0, 1, 2, 3, 4]);
  expect([r.ok, r.skipped, r.failed.length]).toEqual([2, 3, 0]);
  expect(records.filter((x) => x.status === 'skipped').map((x) => x.index)).toEqual([0, 1, 2]);
  expect([0, 1, 2].map((i) => statSync(join(dir, `img${i}.png`)).mtimeMs)).toEqual(before);
  expect(readdirSync(dir).sort()).toEqual(m.map(([f]) => f).sort());
});

// ---- the built CLI on the tiny model ------------------------------------------------------------

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const MODEL = join(goldenCase('tiny_e2e'), 'model');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
function step1x(args: string[], extraEnv: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: 900_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l && !l.startsWith('Warning:')).join('\n') };
}
const SPEC = ['--size', '48', '--steps', '1', '--cfg', '6', '--quiet'];

test('CLI: corrupt image among good ones, shards 0/2 + 1/2 write every output once, --report, --skip-existing', async () => {
  const inDir = mkdtempSync(join(tmpdir(), 'step1x-bin-'));
  const outDir = join(mkdtempSync(join(tmpdir(), 'step1x-bout-')), 'nested', 'out'); // created by batch
  const io = await SafetensorsFile.open(join(goldenCase('tiny_e2e'), 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  writeFileSync(join(inDir, 'a.png'), encodePng({ width: W, height: H, data: await io.readBytes('in.photo_u8') }));
  await io.close();
  copyFileSync(join(inDir, 'a.png'), join(inDir, 'c.png'));
  copyFileSync(join(inDir, 'a.png'), join(inDir, 'd.png'));
  writeFileSync(join(inDir, 'bad.png'), readFileSync(join(inDir, 'a.png')).subarray(0, 60)); // truncated PNG
  const man = join(inDir, 'm.json');
  writeFileSync(man, JSON.stringify({ 'a.png': 'add snow', 'bad.png': 'add rain', 'c.png': 'add fog', 'd.png': 'add sun' }));
  const base = ['batch', man, '--input-dir', inDir, '--output-dir', outDir, '--model', MODEL, ...SPEC];

  // colliding names: refused before any work, nothing created
  const clash = join(inDir, 'clash.json');
  writeFileSync(clash, JSON.stringify({ 'a.png': 'x', 'a.jpg': 'y' }));
  const c = step1x(['batch', clash, '--input-dir', inDir, '--output-dir', join(outDir, 'never'), '--model', MODEL, '--quiet']);
  expect(c.code).toBe(ExitCode.USAGE);
  expect(c.stderr).toMatch(/"a\.png" and "a\.jpg" would all write a\.png/);
  expect(existsSync(join(outDir, 'never'))).toBe(false);

  const s0 = step1x([...base, '--shard', '0/2']);
  expect(s0.stderr).toBe('');
  expect(s0.code).toBe(0);
  expect(readdirSync(outDir).sort()).toEqual(['a.png', 'c.png']);
  const report = join(inDir, 'report.jsonl');
  const s1 = step1x([...base, '--shard', '1/2', '--report', report]);
  expect(s1.code).toBe(ExitCode.INPUT);
  expect(s1.stderr).toMatch(/batch \(shard 1\/2 of 4 entries\): 1 written, 1 failed, 0 skipped \(existing\); 1 entry failed: bad\.png/);
  expect(readdirSync(outDir).sort()).toEqual(['a.png', 'c.png', 'd.png']); // every good output exactly once
  const recs = readFileSync(report, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  expect(recs.map((r) => [r.index, r.status])).toEqual([[1, 'failed'], [3, 'ok']]);
  expect(recs[0].error).toMatch(/bad\.png/);
  expect(recs[0].exit_code).toBe(ExitCode.INPUT);
  expect(recs[1].seed).toBe(42);
  expect(recs[1].timings_s.total).toBeGreaterThan(0);
  expect((await readImage(join(outDir, 'd.png'))).width).toBe(W);

  // resume: everything written is left alone, the bad entry is tried (and reported) again
  const mtimes = ['a.png', 'c.png', 'd.png'].map((f) => statSync(join(outDir, f)).mtimeMs);
  const again = step1x([...base, '--skip-existing', '--report', report]);
  expect(again.code).toBe(ExitCode.INPUT);
  expect(again.stderr).toMatch(/0 written, 1 failed, 3 skipped/);
  expect(['a.png', 'c.png', 'd.png'].map((f) => statSync(join(outDir, f)).mtimeMs)).toEqual(mtimes);
  expect(readFileSync(report, 'utf8').trim().split('\n').map((l) => JSON.parse(l).status)).toEqual(['failed', 'ok', 'skipped', 'skipped', 'skipped', 'failed']); // appended, never truncated
  // --fail-fast with the bad entry first stops there
  const ff = step1x([...base, '--shard', '1/2', '--fail-fast']);
  expect(ff.code).toBe(ExitCode.INPUT);
  expect(ff.stderr).not.toMatch(/written/);
});

/**
 * Issue 21, group 4: batch manifests and runs as untrusted input. Keys are relative paths inside
 * --input-dir, duplicate keys are refused (JSON would keep the last silently), collisions are found in one
 * pass with a short message, --skip-existing redoes an output that does not decode, a full disk stops the
 * batch, the interrupt note counts what was written, `--shard auto/N` reads Slurm arrays beside Kubernetes
 * Indexed Jobs, --input-dir == --output-dir is refused, and the worker ends when the launcher is killed.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../src/errors.js';
import { parseManifest, parseShard, planBatch, redoUndecodable, runBatch, topLevelKeys } from '../src/cli/batch.js';
import { interruptNoteNow } from '../src/pipeline/output.js';
import type { Reporter } from '../src/cli/progress.js';
import type { EditResult } from '../src/pipeline/edit-pipeline.js';
import { behaviour } from '../src/pipeline/official.js';
import { baseEnv, CLI, step1x, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const { dir, photo } = tempPhoto('step1x-hb-');
const rep: Reporter = { update() {}, progress() {}, done() {}, fail() {}, stop() {} };
const fake = (): EditResult => ({
  image: { width: 1, height: 1, data: new Uint8Array(3) }, task: 'edit', version: 'v1.1', behaviour: behaviour('current'),
  workingSize: [16, 16], seed: 42, timings: { total: 0.01 }, peakGpuBytes: 0, parameters: {},
});

function manifestFile(text: string): string {
  const p = join(mkdtempSync(join(dir, 'm-')), 'm.json');
  writeFileSync(p, text);
  return p;
}

function usage(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect((e as Step1xError).code).toBe(ExitCode.USAGE);
    return (e as Error).message;
  }
  throw new Error('no error');
}

test('keys are relative paths inside --input-dir: ../, absolute, NUL and newline refused by name', () => {
  for (const k of ['../secret/s.png', 'a/../../s.png', '/etc/s.png', 'a\u0000.png', 'a\n.png', './a.png'])
    expect(usage(() => parseManifest(manifestFile(JSON.stringify({ 'ok.png': 'x', [k]: 'y' }))))).toMatch(/is not a relative path inside --input-dir/);
  expect(parseManifest(manifestFile(JSON.stringify({ 'sub/a.png': 'x' })))).toEqual([['sub/a.png', 'x']]);
});

test('duplicate keys are refused, naming the key; a BOM is not part of the JSON; a FIFO manifest does not block', () => {
  expect(usage(() => parseManifest(manifestFile('{"a.png": "first", "b.png": "x", "a.png": "second"}')))).toMatch(/image name "a\.png" appears more than once/);
  expect(topLevelKeys('{"a": {"a": 1, "b": [{"c": 2}]}, "x\\"y": "z", "q": "\\\\"}')).toEqual(['a', 'x"y', 'q']);
  expect(parseManifest(manifestFile('\uFEFF{"a.png": "x"}'))).toEqual([['a.png', 'x']]);
  const fifo = join(dir, 'm.fifo');
  execFileSync('mkfifo', [fifo]);
  expect(usage(() => parseManifest(fifo))).toMatch(/FIFO/);
  // a 300 MB (sparse) manifest is refused by its size, before a byte is read
  const huge = manifestFile('');
  truncateSync(huge, 300 << 20);
  expect(usage(() => parseManifest(huge))).toMatch(/is 300 MiB, more than the 256 MiB/);
});

test('100k colliding names: found in one pass, a short message', () => {
  const entries: [string, string][] = Array.from({ length: 100_000 }, (_, i) => [`d${i}/same.png`, 'x']);
  const m = usage(() => planBatch(entries, { inputDir: '/in', outputDir: '/out' }));
  expect(m).toMatch(/"d0\/same\.png" and "d1\/same\.png" and "d2\/same\.png" and 99997 more would all write same\.png/);
  expect(m.length).toBeLessThan(300);
});

test('--shard auto/N: Kubernetes JOB_COMPLETION_INDEX, else Slurm SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN', () => {
  expect(parseShard('auto/4', { JOB_COMPLETION_INDEX: '2' })).toEqual({ index: 2, count: 4 });
  expect(parseShard('auto/4', { SLURM_ARRAY_TASK_ID: '3' })).toEqual({ index: 3, count: 4 });
  expect(parseShard('auto/4', { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_MIN: '4', SLURM_ARRAY_TASK_COUNT: '4' })).toEqual({ index: 1, count: 4 });
  expect(usage(() => parseShard('auto/4', { SLURM_ARRAY_TASK_ID: '1', SLURM_ARRAY_TASK_COUNT: '8' }))).toMatch(/the Slurm array has 8 tasks; run it with --array=0-3/);
  expect(usage(() => parseShard('auto/4', { SLURM_ARRAY_TASK_ID: '7', SLURM_ARRAY_TASK_MIN: '0' }))).toMatch(/need 0 <= I < N/);
  expect(usage(() => parseShard('auto/4', { SLURM_ARRAY_TASK_ID: 'x' }))).toMatch(/SLURM_ARRAY_TASK_ID must be a non-negative integer/);
  expect(usage(() => parseShard('auto/4', {}))).toMatch(/JOB_COMPLETION_INDEX .* or SLURM_ARRAY_TASK_ID/);
});

test('a full disk stops the batch at the first entry; the interrupt note counts what was written', async () => {
  const plan = planBatch([['a.png', 'x'], ['b.png', 'y'], ['c.png', 'z']], { inputDir: '/in', outputDir: '/out' });
  const tried: string[] = [];
  const edit = async (e: { name: string }) => {
    tried.push(e.name);
    if (e.name === 'a.png') return fake();
    throw new Step1xError('cannot write /out/b.png: no space left on the device (ENOSPC)', ExitCode.OUTPUT);
  };
  await expect(runBatch(plan, edit, { rep })).rejects.toThrow(/ENOSPC/);
  expect(tried).toEqual(['a.png', 'b.png']);
  expect(interruptNoteNow()).toMatch(/^1 output written, 2 not; run again with --skip-existing/);
});

test('--skip-existing redoes an output that does not decode (a truncated PNG is not done)', async () => {
  const out = mkdtempSync(join(dir, 'out-'));
  copyFileSync(photo, join(out, 'good.png'));
  writeFileSync(join(out, 'cut.png'), readFileSync(photo).subarray(0, 100));
  const plan = planBatch([['good.png', 'x'], ['cut.png', 'y'], ['new.png', 'z']], { inputDir: dir, outputDir: out, skipExisting: true });
  expect(plan.existing.map((e) => e.name)).toEqual(['good.png', 'cut.png']);
  const again = await redoUndecodable(plan, true);
  expect(again.existing.map((e) => e.name)).toEqual(['good.png']);
  expect(again.run.map((e) => e.name)).toEqual(['cut.png', 'new.png']);
});

test('CLI: --input-dir == --output-dir and a ../ key are refused before any model work', () => {
  const inDir = mkdtempSync(join(dir, 'same-'));
  copyFileSync(photo, join(inDir, 'a.png'));
  const man = manifestFile(JSON.stringify({ 'a.png': 'x' }));
  const a = step1x(['batch', man, '--input-dir', inDir, '--output-dir', `${inDir}/.`, '--model', '/nonexistent']);
  expect(a.code).toBe(ExitCode.USAGE);
  expect(a.stderr).toMatch(/is --input-dir: the edits would replace the inputs/);
  const b = step1x(['batch', manifestFile(JSON.stringify({ '../secret/s.png': 'x' })), '--input-dir', inDir, '--output-dir', join(dir, 'o'), '--model', '/nonexistent']);
  expect(b.code).toBe(ExitCode.USAGE);
  expect(b.stderr).toMatch(/"\.\.\/secret\/s\.png" is not a relative path inside --input-dir/);
});

test('CLI: SIGKILL of the launcher ends the worker (it does not go on with the batch)', async () => {
  const inDir = mkdtempSync(join(dir, 'kill-'));
  execFileSync('mkfifo', [join(inDir, 'a.png')]); // the worker blocks reading it: it would wait forever
  const man = manifestFile(JSON.stringify({ 'a.png': 'x' }));
  const outDir = join(dir, 'kill-out');
  mkdirSync(outDir);
  const launcher = spawn(process.execPath, [CLI, 'batch', man, '--input-dir', inDir, '--output-dir', outDir, '--model', TINY_MODEL, '--quiet'], { env: baseEnv, stdio: 'ignore' });
  let worker = 0;
  for (let i = 0; i < 100 && !worker; i++) {
    await new Promise((r) => setTimeout(r, 100));
    worker = Number(spawnSync('ps', ['-o', 'pid=', '--ppid', String(launcher.pid)], { encoding: 'utf8' }).stdout.trim().split('\n')[0] || 0);
  }
  expect(worker).toBeGreaterThan(0);
  await new Promise((r) => setTimeout(r, 1500)); // let it reach the blocking read
  launcher.kill('SIGKILL');
  let alive = true;
  for (let i = 0; i < 50 && alive; i++) {
    await new Promise((r) => setTimeout(r, 100));
    alive = spawnSync('kill', ['-0', String(worker)]).status === 0 && !/Z/.test(spawnSync('ps', ['-o', 'stat=', '-p', String(worker)], { encoding: 'utf8' }).stdout);
  }
  if (alive) process.kill(worker, 'SIGKILL');
  expect(alive).toBe(false);
  expect(existsSync(join(outDir, 'a.png'))).toBe(false);
}, 30_000);

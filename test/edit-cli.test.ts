/**
 * `step1x edit` / `step1x batch` as a user runs them (spawned processes on the built CLI): the tiny
 * end-to-end model reproduces the official output image, errors give one line and their exit code,
 * an interrupted run leaves no file behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { encodePng, readImage } from '../src/io/image.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const CASE = goldenCase('tiny_e2e');
const MODEL = join(CASE, 'model');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };

function step1x(args: string[], extraEnv: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: 600_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l && !l.startsWith('Warning:')).join('\n') };
}

let dir = '';
let photoPath = '';
let noisePath = '';
let golden: { data: Uint8Array; shape: number[] };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-edit-'));
  const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  photoPath = join(dir, 'photo.png');
  writeFileSync(photoPath, encodePng({ width: W, height: H, data: await io.readBytes('in.photo_u8') }));
  noisePath = join(dir, 'noise.safetensors');
  const noise = await io.readF32('in.noise');
  await writeSafetensors(noisePath, { noise: { dtype: 'F32', shape: [...io.tensors.get('in.noise')!.shape], data: noise } });
  golden = { data: await io.readBytes('out.rgb_u8'), shape: [...io.tensors.get('out.rgb_u8')!.shape] };
  await io.close();
});

// tiny_e2e was made by the May 2025 official code (bicubic input, no CFG truncation, flash text attention)
const SPEC = ['--size', '80', '--steps', '4', '--cfg', '6', '--compat', '2025-05'];
const PROMPT = 'Make the sign say "HELLO WORLD" and add falling snow';

test('edit on the tiny model reproduces the official image (u8 ±1 on ≤ 2 %)', async () => {
  const out = join(dir, 'out.png');
  const r = step1x(['edit', photoPath, PROMPT, '--model', MODEL, ...SPEC, '--noise', noisePath, '-o', out, '--json', '--quiet']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = JSON.parse(r.stdout.trim());
  expect(res.output).toBe(out);
  expect(res.working_size).toEqual([80, 64]);
  expect(res.peak_rss_bytes).toBeGreaterThan(0);
  const img = await readImage(out);
  expect([img.height, img.width, 3]).toEqual(golden.shape);
  let maxDiff = 0, differ = 0;
  for (let i = 0; i < img.data.length; i++) {
    const d = Math.abs(img.data[i] - golden.data[i]);
    if (d) differ++;
    maxDiff = Math.max(maxDiff, d);
  }
  const frac = differ / img.data.length;
  if (maxDiff > 1 || frac > 0.02) throw new Error(`out.rgb_u8: max |diff| ${maxDiff} (≤ 1), differing fraction ${frac.toFixed(4)} (≤ 0.02)`);
  const meta = step1x(['inspect', out]);
  expect(meta.code).toBe(0);
  expect(meta.stdout).toContain('HELLO WORLD');
  expect(meta.stdout).toMatch(/steps/);
});

test.each([
  ['missing input', ['edit', '/nonexistent/in.png', 'x', '--model', MODEL], 3, /no such file/],
  ['not an image', ['edit', join(REPO_ROOT, 'package.json'), 'x', '--model', MODEL], 3, /package\.json/],
  ['missing weights', ['edit', 'PHOTO', 'x', '--model', '/tmp'], 4, /model files missing/],
  ['unwritable output', ['edit', 'PHOTO', 'x', '--model', MODEL, '-o', '/nonexistent-dir/out.png'], 7, /does not exist/],
  ['bad steps', ['edit', 'PHOTO', 'x', '--model', MODEL, '--steps', '0'], 2, /--steps/],
  ['empty instruction', ['edit', 'PHOTO', ' ', '--model', MODEL], 2, /instruction is empty/],
])('%s: one line and its exit code', (_n, args, code, re) => {
  const r = step1x((args as string[]).map((a) => (a === 'PHOTO' ? photoPath : a)));
  expect(r.code).toBe(code);
  expect(r.stderr.split('\n')[0]).toMatch(re as RegExp);
  expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
});

test('no GPU adapter: one line naming the fix, exit 5', () => {
  const r = step1x(['devices'], { VK_ICD_FILENAMES: '/nonexistent.json', VK_DRIVER_FILES: '/nonexistent.json' });
  expect(r.code).toBe(5);
  expect(r.stderr).toMatch(/no WebGPU adapter found.*lavapipe/);
});

test('interrupting an edit leaves no output file', async () => {
  const sub = mkdtempSync(join(tmpdir(), 'step1x-kill-'));
  const out = join(sub, 'out.png');
  const child = spawn(process.execPath, [CLI, 'edit', photoPath, PROMPT, '--model', MODEL, ...SPEC, '-o', out], { env });
  let err = '';
  await new Promise<void>((res) => {
    child.stderr.on('data', (d) => {
      err += d;
      if (/sampling|VAE|Qwen/.test(err) && !child.killed) child.kill('SIGINT');
    });
    child.on('exit', () => res());
  });
  expect(child.exitCode ?? 130).toBe(130);
  expect(existsSync(out)).toBe(false);
  expect(readdirSync(sub)).toEqual([]);
});

test('batch: official manifest, outputs named after the inputs', () => {
  const inDir = mkdtempSync(join(tmpdir(), 'step1x-bin-'));
  const outDir = mkdtempSync(join(tmpdir(), 'step1x-bout-'));
  writeFileSync(join(inDir, 'a.png'), '');
  spawnSync('cp', [photoPath, join(inDir, 'a.png')]);
  spawnSync('cp', [photoPath, join(inDir, 'b.jpg.png')]);
  const manifest = join(inDir, 'm.json');
  writeFileSync(manifest, JSON.stringify({ 'a.png': 'add snow', 'b.jpg.png': '把天空变成紫色' }));
  const r = step1x(['batch', manifest, '--input-dir', inDir, '--output-dir', outDir, '--model', MODEL, ...SPEC, '--quiet']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(readdirSync(outDir).sort()).toEqual(['a.png', 'b.jpg.png']);
  const bad = step1x(['batch', manifest, '--input-dir', '/nonexistent', '--output-dir', outDir, '--model', MODEL]);
  expect(bad.code).toBe(3);
  chmodSync(outDir, 0o755);
});

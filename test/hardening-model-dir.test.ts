/**
 * Issue 13, item 9: broken model directories give exit 4 and a line that names the problem, never an
 * internal error: dangling and looping symlinks (HF cache snapshots), absurd config values (refused
 * before anything is sized from them), a tiny model without step1x.json.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseQwenConfig } from '../src/models/qwen25vl/config.js';
import { expectCleanStderr, step1x, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const { photo } = tempPhoto('step1x-md-');
const QWEN = 'Qwen2.5-VL-7B-Instruct';

function copyModel(): string {
  const d = mkdtempSync(join(tmpdir(), 'step1x-model-'));
  cpSync(TINY_MODEL, d, { recursive: true });
  return d;
}

test('HF cache snapshot with a dangling blob link: exit 4 naming the broken symlink', () => {
  const hub = mkdtempSync(join(tmpdir(), 'step1x-hub-'));
  const rev = 'b'.repeat(40);
  const s = join(hub, 'models--stepfun-ai--Step1X-Edit', 'snapshots', rev);
  mkdirSync(s, { recursive: true });
  mkdirSync(join(hub, 'models--stepfun-ai--Step1X-Edit', 'refs'));
  writeFileSync(join(hub, 'models--stepfun-ai--Step1X-Edit', 'refs', 'main'), rev);
  cpSync(join(TINY_MODEL, 'step1x-edit-i1258.safetensors'), join(s, 'step1x-edit-i1258.safetensors'));
  symlinkSync('../../blobs/deadbeef', join(s, 'vae.safetensors'));
  cpSync(join(TINY_MODEL, QWEN), join(s, QWEN), { recursive: true });
  // and a dangling snapshot directory link next to it
  symlinkSync(join(hub, 'nowhere'), join(hub, 'models--stepfun-ai--Step1X-Edit', 'snapshots', 'c'.repeat(40)));
  const r = step1x(['edit', photo, 'x', '--size', '32'], { env: { HF_HUB_CACHE: hub, STEP1X_MODEL: undefined } });
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/vae\.safetensors: a broken symlink \(→ \.\.\/\.\.\/blobs\/deadbeef, which does not exist\)/);
  expectCleanStderr(r.stderr);
});

test('a looping symlink in --model DIR: exit 4 naming the loop (not "missing")', () => {
  const d = copyModel();
  rmSync(join(d, 'vae.safetensors'));
  symlinkSync('vae.safetensors', join(d, 'vae.safetensors'));
  const r = step1x(['edit', photo, 'x', '--model', d, '--size', '32']);
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/vae\.safetensors: a symlink loop/);
  expectCleanStderr(r.stderr);
});

test('num_hidden_layers: 10000000 in config.json is refused before anything is sized from it', () => {
  const cfgPath = join(TINY_MODEL, QWEN, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
  const t0 = performance.now();
  expect(() => parseQwenConfig({ ...cfg, num_hidden_layers: 10_000_000 }, 'config.json')).toThrow(/"num_hidden_layers" = 10000000 is beyond any sane model/);
  expect(performance.now() - t0).toBeLessThan(100);
  const d = copyModel();
  writeFileSync(join(d, QWEN, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 10_000_000 }));
  const r = step1x(['edit', photo, 'x', '--model', d, '--size', '32', '--steps', '1']);
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/num_hidden_layers" = 10000000 is beyond any sane model/);
  expectCleanStderr(r.stderr);
});

test('a tiny model without step1x.json: exit 4, the message names step1x.json', () => {
  const d = copyModel();
  rmSync(join(d, 'step1x.json'));
  const r = step1x(['edit', photo, 'x', '--model', d, '--size', '32', '--steps', '1', '--quiet']);
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/no step1x\.json beside this checkpoint/);
  expectCleanStderr(r.stderr);
});

/**
 * Issue 21, group 5: config values of a model directory are range-checked before use. step1x.json's
 * `max_length 1e12`, `max_pixels 1e15`, `ae.scale_factor "x"`, a negative eps and Qwen's negative or zero
 * `rms_norm_eps` are refused in one line naming the key (exit 4), before anything is allocated from them;
 * a FIFO in place of step1x.json or config.json is refused instead of blocking.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../src/errors.js';
import { resolveModelFiles } from '../src/io/model-files.js';
import { loadQwenConfig } from '../src/models/qwen25vl/config.js';
import { TINY_MODEL } from './util/cli-run.js';

const hp = JSON.parse(readFileSync(join(TINY_MODEL, 'step1x.json'), 'utf8'));

/** The tiny model with its step1x.json replaced (other entries symlinked). */
function modelWith(edit: (j: any) => void | string): string {
  const d = mkdtempSync(join(tmpdir(), 'step1x-cfg-'));
  for (const n of readdirSync(TINY_MODEL)) if (n !== 'step1x.json') symlinkSync(join(TINY_MODEL, n), join(d, n));
  const j = structuredClone(hp);
  const raw = edit(j);
  writeFileSync(join(d, 'step1x.json'), typeof raw === 'string' ? raw : JSON.stringify(j));
  return d;
}

function err(f: () => unknown): Step1xError {
  try {
    f();
  } catch (e) {
    return e as Step1xError;
  }
  throw new Error('no error');
}

test('step1x.json values out of range: refused naming the key, exit 4', () => {
  const cases: [(j: any) => void, RegExp][] = [
    [(j) => void (j.embedder.max_length = 1e12), /"embedder\.max_length" = 1000000000000 must be an integer in \[1, 8192\]/],
    [(j) => void (j.embedder.max_pixels = 1e15), /"embedder\.max_pixels" .* must be an integer in/],
    [(j) => void (j.embedder.min_pixels = 300000), /"embedder\.min_pixels" .* must be at most max_pixels/],
    [(j) => void (j.ae.scale_factor = 'x'), /"ae\.scale_factor" = "x" must be a number/],
    [(j) => void (j.dit.rms_norm_eps = -1e-6), /"dit\.rms_norm_eps" .* must be in \(0, 1\)/],
    [(j) => void (j.dit.depth = 1e12), /"dit\.depth" .* must be an integer in \[0, 1000000\]/],
  ];
  for (const [edit, re] of cases) {
    const e = err(() => resolveModelFiles(modelWith(edit)));
    expect(e.code).toBe(ExitCode.WEIGHTS);
    expect(e.message).toMatch(re);
  }
  expect(resolveModelFiles(modelWith(() => undefined)).hparams).toEqual(hp); // the real file passes
});

test('Qwen config: rms_norm_eps <= 0 and rope_theta 0 refused; a FIFO config is refused, not waited on', async () => {
  const cfg = JSON.parse(readFileSync(join(TINY_MODEL, 'Qwen2.5-VL-7B-Instruct', 'config.json'), 'utf8'));
  const d = mkdtempSync(join(tmpdir(), 'step1x-qcfg-'));
  for (const [k, v, re] of [['rms_norm_eps', -1e-6, /"rms_norm_eps" = -0\.000001 must be in \(0, 1\)/], ['rope_theta', 0, /"rope_theta" = 0 must be in/]] as const) {
    const p = join(d, `${k}.json`);
    writeFileSync(p, JSON.stringify({ ...cfg, [k]: v }));
    await expect(loadQwenConfig(p)).rejects.toThrow(re);
  }
  const f = join(d, 'fifo');
  mkdirSync(f);
  execFileSync('mkfifo', [join(f, 'config.json')]);
  await expect(loadQwenConfig(f)).rejects.toThrow(/FIFO/);
});

/** Model resolution: --model DIR, $STEP1X_MODEL, the Hugging Face cache (v1.2 > v1.1 > v1.0); missing files named with sizes. */
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { modelFilesInDir, resolveModelFiles } from '../src/io/model-files.js';
import { Step1xError, ExitCode } from '../src/errors.js';
import { goldenCase } from './util/golden-path.js';

function makeModelDir(root: string, opts: { skip?: string[]; dit?: string } = {}): void {
  mkdirSync(join(root, 'Qwen2.5-VL-7B-Instruct'), { recursive: true });
  const files = [opts.dit ?? 'step1x-edit-i1258.safetensors', 'vae.safetensors', 'Qwen2.5-VL-7B-Instruct/config.json', 'Qwen2.5-VL-7B-Instruct/tokenizer.json', 'Qwen2.5-VL-7B-Instruct/model.safetensors.index.json'];
  for (const f of files) if (!opts.skip?.includes(f)) writeFileSync(join(root, f), '{}');
}

const saved = { ...process.env };
afterEach(() => {
  process.env = { ...saved };
});

test('official layout is found, v1.1 file name accepted, step1x.json read', () => {
  const d = mkdtempSync(join(tmpdir(), 'm-'));
  makeModelDir(d, { dit: 'step1x-edit-v1p1-official.safetensors' });
  writeFileSync(join(d, 'step1x.json'), JSON.stringify({ format: 'step1x-tiny-hparams/1', dit: { hidden_size: 64 } }));
  const f = modelFilesInDir(d);
  expect(f.dit.endsWith('step1x-edit-v1p1-official.safetensors')).toBe(true);
  expect(f.hparams?.dit?.hidden_size).toBe(64);
});

test('missing files are each named with their size and how to get them', () => {
  const d = mkdtempSync(join(tmpdir(), 'm-'));
  makeModelDir(d, { skip: ['vae.safetensors', 'step1x-edit-i1258.safetensors', 'Qwen2.5-VL-7B-Instruct/tokenizer.json'] });
  try {
    modelFilesInDir(d);
    throw new Error('expected a failure');
  } catch (e) {
    expect(e).toBeInstanceOf(Step1xError);
    const err = e as Step1xError;
    expect(err.code).toBe(ExitCode.WEIGHTS);
    expect(err.message).toMatch(/step1x-edit-v1p1-official\.safetensors \(24\.9 GB\)/); // the default version's file
    expect(err.message).toMatch(/vae\.safetensors \(335 MB\)/);
    expect(err.message).toMatch(/Qwen2\.5-VL-7B-Instruct\/tokenizer\.json/);
    expect(err.message).toMatch(/huggingface-cli download/);
  }
});

test('$STEP1X_MODEL, then the Hugging Face cache', () => {
  const d = mkdtempSync(join(tmpdir(), 'm-'));
  makeModelDir(d);
  process.env.STEP1X_MODEL = d;
  expect(resolveModelFiles().source).toBe('$STEP1X_MODEL');
  delete process.env.STEP1X_MODEL;
  const hf = mkdtempSync(join(tmpdir(), 'hf-'));
  process.env.HF_HOME = hf;
  delete process.env.HF_HUB_CACHE;
  expect(() => resolveModelFiles()).toThrow(/Hugging Face cache/);
  const s = join(hf, 'hub/models--stepfun-ai--Step1X-Edit/snapshots/abc');
  const q = join(hf, 'hub/models--Qwen--Qwen2.5-VL-7B-Instruct/snapshots/def');
  mkdirSync(s, { recursive: true });
  mkdirSync(q, { recursive: true });
  mkdirSync(join(hf, 'hub/models--stepfun-ai--Step1X-Edit/refs'), { recursive: true });
  writeFileSync(join(hf, 'hub/models--stepfun-ai--Step1X-Edit/refs/main'), 'abc');
  for (const f of ['step1x-edit-i1258.safetensors', 'vae.safetensors']) writeFileSync(join(s, f), '');
  for (const f of ['config.json', 'tokenizer.json', 'model.safetensors.index.json']) writeFileSync(join(q, f), '{}');
  const r = resolveModelFiles();
  expect(r.dit).toBe(join(s, 'step1x-edit-i1258.safetensors'));
  expect(r.qwenDir).toBe(q);
});

test('the Hugging Face cache holding several versions: v1.2 > v1.1 > v1.0 without --version, --version picks', () => {
  const hf = mkdtempSync(join(tmpdir(), 'hf-'));
  process.env.HF_HOME = hf;
  delete process.env.HF_HUB_CACHE;
  delete process.env.STEP1X_MODEL;
  const snap = (repo: string) => {
    const d = join(hf, `hub/models--${repo.replace('/', '--')}`);
    mkdirSync(join(d, 'refs'), { recursive: true });
    writeFileSync(join(d, 'refs/main'), 'abc');
    mkdirSync(join(d, 'snapshots/abc'), { recursive: true });
    return join(d, 'snapshots/abc');
  };
  const s = snap('stepfun-ai/Step1X-Edit'), q = snap('Qwen/Qwen2.5-VL-7B-Instruct');
  for (const f of ['step1x-edit-i1258.safetensors', 'step1x-edit-v1p1-official.safetensors', 'vae.safetensors']) writeFileSync(join(s, f), '');
  for (const f of ['config.json', 'tokenizer.json', 'model.safetensors.index.json']) writeFileSync(join(q, f), '{}');
  const v12 = join(hf, 'hub/models--stepfun-ai--Step1X-Edit-v1p2');
  cpSync(join(goldenCase('v12_e2e_tiny'), 'model'), snap('stepfun-ai/Step1X-Edit-v1p2'), { recursive: true, dereference: true });
  const name = (r: ReturnType<typeof resolveModelFiles>) => (r.diffusers ? `${r.diffusers.version} diffusers` : r.dit.split('/').pop());
  expect(name(resolveModelFiles())).toBe('v1.2 diffusers');
  expect(name(resolveModelFiles(undefined, { version: 'v1.1' }))).toBe('step1x-edit-v1p1-official.safetensors');
  expect(name(resolveModelFiles(undefined, { version: 'v1.0' }))).toBe('step1x-edit-i1258.safetensors');
  rmSync(v12, { recursive: true });
  expect(name(resolveModelFiles())).toBe('step1x-edit-v1p1-official.safetensors');
  expect(() => resolveModelFiles(undefined, { version: 'v1.2' })).toThrow(/step1x download --version v1\.2/);
  rmSync(join(s, 'step1x-edit-v1p1-official.safetensors'));
  expect(name(resolveModelFiles())).toBe('step1x-edit-i1258.safetensors');
  rmSync(hf, { recursive: true, force: true });
});

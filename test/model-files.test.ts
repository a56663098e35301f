/** Model resolution: --model DIR, $STEP1X_MODEL, the Hugging Face cache; missing files named with sizes. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { modelFilesInDir, resolveModelFiles } from '../src/io/model-files.js';
import { Step1xError, ExitCode } from '../src/errors.js';

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

/**
 * `step1x edit` extras as a user runs them (the built CLI on the tiny model):
 *  - model files are checked before the first stage: a truncated VAE or a mis-shaped tensor exits 4
 *    (not 2) with one line naming the file, before Qwen runs;
 *  - unsupported -o extensions and --mask-feather without --mask are refused up front (exit 2);
 *  - an all-black --mask returns the input's pixels exactly; the PNG has the A1111 `parameters` tEXt
 *    before IDAT (parsed A1111-style) next to the detailed iTXt, and `inspect` shows both;
 *  - with CI=true progress still prints plain timestamped per-step lines.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode } from '../src/errors.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { encodePng, readImage } from '../src/io/image.js';
import { readPngInfo } from '../src/io/png-text.js';
import { parseA1111 } from '../src/io/encode.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const MODEL = join(goldenCase('tiny_e2e'), 'model');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
function step1x(args: string[], extraEnv: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: 900_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l && !l.startsWith('Warning:')).join('\n') };
}

let dir = '', photo = '', W = 0, H = 0;
let pixels: Uint8Array = new Uint8Array();
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-extras-'));
  const io = await SafetensorsFile.open(join(goldenCase('tiny_e2e'), 'io.safetensors'));
  [H, W] = io.tensors.get('in.photo_u8')!.shape;
  pixels = await io.readBytes('in.photo_u8');
  await io.close();
  photo = join(dir, 'photo.png');
  writeFileSync(photo, encodePng({ width: W, height: H, data: pixels }));
});

/** A model directory like MODEL whose `vae.safetensors` is replaced by `vae` bytes. */
function modelWithVae(vae: Uint8Array | ((path: string) => Promise<void>)): Promise<string> {
  const m = mkdtempSync(join(tmpdir(), 'step1x-model-'));
  for (const f of ['step1x-edit-i1258.safetensors', 'step1x.json', 'Qwen2.5-VL-7B-Instruct']) symlinkSync(join(MODEL, f), join(m, f));
  if (vae instanceof Uint8Array) {
    writeFileSync(join(m, 'vae.safetensors'), vae);
    return Promise.resolve(m);
  }
  return vae(join(m, 'vae.safetensors')).then(() => m);
}

test('a truncated or mis-shaped model file exits 4 before any stage runs', async () => {
  const full = readFileSync(join(MODEL, 'vae.safetensors'));
  const truncated = await modelWithVae(full.subarray(0, Math.floor(full.length * 0.7)));
  const t = step1x(['edit', photo, 'add snow', '--model', truncated, '-o', join(dir, 't.png')]);
  expect(t.code).toBe(ExitCode.WEIGHTS);
  expect(t.stderr).toMatch(/VAE checkpoint is damaged: .*vae\.safetensors.*truncated/);
  expect(t.stderr).not.toMatch(/Qwen2\.5-VL layers|sampling/); // nothing ran
  const misShaped = await modelWithVae(async (p) => {
    const src = await SafetensorsFile.open(join(MODEL, 'vae.safetensors'));
    const out: Record<string, WriteTensor> = {};
    for (const [name, info] of src.tensors) out[name] = { dtype: info.dtype, shape: name === 'decoder.conv_out.bias' ? [1, ...info.shape] : [...info.shape], data: await src.readBytes(name) };
    await src.close();
    await writeSafetensors(p, out);
  });
  const s = step1x(['edit', photo, 'add snow', '--model', misShaped, '-o', join(dir, 's.png'), '--quiet']);
  expect(s.code).toBe(ExitCode.WEIGHTS);
  expect(s.stderr).toMatch(/decoder\.conv_out\.bias/);
  expect(s.stderr.split('\n').length).toBe(1);
});

test.each([
  ['unsupported extension', ['-o', 'OUT/x.gif'], /unsupported output extension "\.gif"; use \.png, \.jpg, \.jpeg or \.webp/],
  ['feather without mask', ['--mask-feather', '3'], /--mask-feather needs --mask/],
  ['bad cache', ['--cache', 'teacache:x'], /--cache/],
])('%s: refused up front, exit 2', (_n, extra, re) => {
  const r = step1x(['edit', photo, 'x', '--model', '/nonexistent', ...(extra as string[]).map((a) => a.replace('OUT', dir))]);
  expect(r.code).toBe(ExitCode.USAGE);
  expect(r.stderr).toMatch(re as RegExp);
});

test('all-black mask: input pixels exactly; parameters tEXt before IDAT parses A1111-style; inspect shows both; CI progress lines', async () => {
  const mask = join(dir, 'black.png');
  writeFileSync(mask, encodePng({ width: 7, height: 5, data: new Uint8Array(7 * 5 * 3) }));
  const out = join(dir, 'masked.png');
  const r = step1x(['edit', photo, 'add "snow", please', '--model', MODEL, '--size', '48', '--steps', '2', '--mask', mask, '--mask-feather', '2', '--cache', 'teacache', '-o', out], { CI: 'true' });
  expect(r.code).toBe(0);
  // plain, timestamped progress lines with CI=true (one per step here: the steps take > 1 s on lavapipe or are the last)
  expect(r.stderr).toMatch(/^\[\d\d:\d\d:\d\d\] sampling 2\/2 \(100%\), \d\d:\d\d elapsed, 00:00 left, [\d.]+ s\/it/m);
  expect(r.stderr).toMatch(/^\[\d\d:\d\d:\d\d\] Qwen2\.5-VL layers \d+\/\d+/m);
  expect(r.stderr).toMatch(/sampled 2 steps at .*TeaCache skipped 0 of 2/);
  const img = await readImage(out);
  expect([img.width, img.height]).toEqual([W, H]);
  expect(Buffer.from(img.data).equals(Buffer.from(pixels))).toBe(true);
  const info = await readPngInfo(out);
  expect(info.chunks.slice(0, 3)).toEqual(['IHDR', 'tEXt', 'IDAT']);
  const p = parseA1111(info.text.find((t) => t.keyword === 'parameters' && t.type === 'tEXt')!.text);
  expect(p.prompt).toBe('add "snow", please');
  const s = Object.fromEntries(p.settings);
  expect(s).toMatchObject({ Steps: '2', Sampler: 'Euler', 'CFG scale': '6', Seed: '42', Model: 'step1x-edit-i1258', Mask: '7x5, feather 2px' });
  expect(s.TeaCache).toMatch(/^teacache:0\.2 \(skipped 0 of 2 steps\)$/);
  expect(info.text.find((t) => t.keyword === 'instruction')?.type).toBe('iTXt');
  const insp = step1x(['inspect', out]);
  expect(insp.code).toBe(0);
  expect(insp.stdout).toMatch(/^parameters \(tEXt\): add "snow", please$/m);
  expect(insp.stdout).toMatch(/^instruction \(iTXt\): add "snow", please$/m);
});

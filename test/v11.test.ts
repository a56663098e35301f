/**
 * The current official Step1X-Edit (upstream 95feaea, Dec 2025; golden "generator version 2"): v1.1
 * checkpoints, CFG truncation 0.93, LANCZOS input resize, SDPA text attention and text-to-image, against
 * the cases made by that code; and the choice of checkpoint when a model directory holds both versions.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, randn, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { expectU8Within } from './util/u8-image.js';
import { runGolden } from '../src/golden/runner.js';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { encodePng, readImage } from '../src/io/image.js';
import { readPngTextChunks } from '../src/io/png-text.js';
import { DIT_FILE_OF, modelFilesInDir } from '../src/io/model-files.js';
import { attention } from '../src/ops/attention.js';
import { behaviour, behaviourOfCase, COMPAT_2025_05, CURRENT } from '../src/pipeline/official.js';
import { runQwenVl } from '../src/golden/kinds/qwen_vl.js';
import type { GoldenContext } from '../src/golden/registry.js';
import { t2iSide, defaultT2iOutput } from '../src/cli/generate.js';

afterAll(releaseGpu);

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
function step1x(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 600_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l).join('\n') };
}

describe('golden cases of the current official code', () => {
  // sampler_v11_tiny, pipeline_v11_tiny, t2i_tiny and tiny_e2e_v11 themselves run in test/golden-strict.test.ts
  // (every tensor of each case produced from in.* alone, within the case tolerances) and in CI's sgmat phases.
  test('which behaviour a case pins: first-generator cases the May 2025 code, later ones what they state', async () => {
    const { readFileSync } = await import('node:fs');
    const cj = (n: string) => JSON.parse(readFileSync(join(goldenCase(n), 'case.json'), 'utf8'));
    expect(behaviourOfCase(cj('tiny_e2e'))).toEqual(COMPAT_2025_05);
    expect(behaviourOfCase(cj('pipeline_tiny'))).toEqual(COMPAT_2025_05);
    expect(behaviourOfCase(cj('pipeline_v11_tiny'))).toMatchObject({ cfgTruncate: 0.93, inputResize: 'lanczos', textAttention: 'sdpa', version: 'v1.1' });
    expect(behaviourOfCase(cj('tiny_e2e_v11'))).toMatchObject({ ...CURRENT, version: 'v1.1' });
    expect(behaviour('current', 1)).toMatchObject({ cfgTruncate: 1, inputResize: 'lanczos' });
  });
});

describe('SDPA semantics of masked text tokens', () => {
  test('a masked query row attends like eager attention over the unmasked keys (f64 reference); flash semantics zero it', async () => {
    const g = await getGpu();
    const B = 1, L = 37, H = 4, Hkv = 2, Dh = 24;
    const q = randn(B * L * H * Dh, 501), k = randn(B * L * Hkv * Dh, 502), v = randn(B * L * Hkv * Dh, 503);
    const km = new Float32Array(L).fill(1);
    const masked = [5, 17, 18, 36];
    for (const i of masked) km[i] = 0;
    const up = (x: Float32Array, shape: number[]) => g.upload(x, shape);
    const [qt, kt, vt, kmt, qmt] = [up(q, [B, L, H, Dh]), up(k, [B, L, Hkv, Dh]), up(v, [B, L, Hkv, Dh]), up(km, [B, L]), up(km, [B, L])];
    const sdpa = await g.readF32(attention(qt, kt, vt, { causal: true, keyMask: kmt }));
    const flash = await g.readF32(attention(qt, kt, vt, { causal: true, keyMask: kmt, queryMask: qmt }));
    for (const t of [qt, kt, vt, kmt, qmt]) t.dispose();
    // eager: softmax over keys j <= i with mask 1, written out here independently of the kernel reference
    let worst = 0;
    for (const i of masked)
      for (let h = 0; h < H; h++) {
        const hk = Math.floor(h / (H / Hkv));
        const keys = [...Array(i + 1).keys()].filter((j) => km[j] === 1);
        const s = keys.map((j) => {
          let d = 0;
          for (let e = 0; e < Dh; e++) d += q[(i * H + h) * Dh + e] * k[(j * Hkv + hk) * Dh + e];
          return d / Math.sqrt(Dh);
        });
        const mx = Math.max(...s), w = s.map((x) => Math.exp(x - mx)), sum = w.reduce((a, b) => a + b, 0);
        for (let e = 0; e < Dh; e++) {
          let ref = 0;
          keys.forEach((j, n) => (ref += (w[n] / sum) * v[(j * Hkv + hk) * Dh + e]));
          const got = sdpa[(i * H + h) * Dh + e];
          worst = Math.max(worst, Math.abs(got - ref) / (1e-6 + Math.abs(ref)));
          if (Math.abs(got - ref) > 2e-5 + 1e-4 * Math.abs(ref)) throw new Error(`row ${i} head ${h} dim ${e}: sdpa ${got}, eager f64 ${ref}`);
          expect(flash[(i * H + h) * Dh + e]).toBe(0);
        }
      }
    expect(worst).toBeLessThan(1e-3);
    // unmasked rows are the same under both semantics
    for (let i = 0; i < L; i++) if (km[i]) for (let x = 0; x < H * Dh; x++) expect(flash[i * H * Dh + x]).toBe(sdpa[i * H * Dh + x]);
  });

  test('qwen_vl_tiny_mask: with SDPA semantics the masked rows differ from the flash golden (the compat mode is not a no-op)', async () => {
    const g = await getGpu();
    const caseDir = goldenCase('qwen_vl_tiny_mask');
    // run the kind as a version-2 case would (SDPA) and compare the embedder output at the masked rows
    const r = await runGolden(caseDir, { gpu: g, log: () => undefined });
    expect(r.report.pass).toBe(true); // compat (flash) semantics: as before
    const io = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
    const { readFileSync } = await import('node:fs');
    const caseJson = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
    const emitted = new Map<string, Float32Array>();
    const ctx = {
      caseDir, spec: caseJson.spec, caseJson: { ...caseJson, generator_version: 2 }, io, gpu: g,
      input: (n: string) => io.readF32(n), inputInt: (n: string) => io.readI32(n), has: (n: string) => io.has(n),
      emit: (n: string, d: Float32Array | Int32Array | Uint8Array) => emitted.set(n, Float32Array.from(d)), log: () => undefined,
    } as unknown as GoldenContext;
    await runQwenVl(ctx);
    const ref = await io.readF32('out.embedder_out');
    await io.close();
    const got = emitted.get('out.embedder_out')!;
    const D = ref.length / (caseJson.spec.max_length ?? 640);
    const rowDiff = (row: number) => Math.max(...Array.from({ length: D }, (_, e) => Math.abs(got[row * D + e] - ref[row * D + e])));
    expect(rowDiff(46)).toBeGreaterThan(1e-2); // kept-span rows of the two masked `!`
    expect(rowDiff(54)).toBeGreaterThan(1e-2);
    expect(rowDiff(10)).toBeLessThan(1e-4); // before the first `!`: causal attention cannot see the difference
  });
});

describe('CLI: v1.1 edit, generate, choosing the checkpoint', () => {
  let dir = '';
  let photo = '';
  let noise = '';
  let golden: { data: Uint8Array; shape: number[] };
  const CASE = goldenCase('tiny_e2e_v11');
  const MODEL = join(CASE, 'model');
  let spec: any;

  beforeAll(async () => {
    const { readFileSync } = await import('node:fs');
    spec = JSON.parse(readFileSync(join(CASE, 'case.json'), 'utf8')).spec;
    dir = mkdtempSync(join(tmpdir(), 'step1x-v11-'));
    const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
    const [H, W] = io.tensors.get('in.photo_u8')!.shape;
    photo = join(dir, 'photo.png');
    writeFileSync(photo, encodePng({ width: W, height: H, data: await io.readBytes('in.photo_u8') }));
    noise = join(dir, 'noise.safetensors');
    await writeSafetensors(noise, { noise: { dtype: 'F32', shape: [...io.tensors.get('in.noise')!.shape], data: await io.readF32('in.noise') } });
    golden = { data: await io.readBytes('out.rgb_u8'), shape: [...io.tensors.get('out.rgb_u8')!.shape] };
    await io.close();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('edit on the v1.1 model with the case settings and no other option writes the official image (u8 ±1 on ≤ 2 %)', async () => {
    const out = join(dir, 'out.png');
    const args = ['edit', photo, spec.prompt, '--model', MODEL, '--size', String(spec.size_level), '--steps', String(spec.num_steps), '--cfg', String(spec.cfg_guidance), '--noise', noise, '-o', out, '--json', '--quiet'];
    const r = step1x(args);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const res = JSON.parse(r.stdout.trim());
    expect(res).toMatchObject({ task: 'edit', dit_version: 'v1.1', compat: 'current', cfg_truncate: 0.93 });
    const img = await readImage(out);
    expect([img.height, img.width, 3]).toEqual(golden.shape);
    expectU8Within('out.rgb_u8', img.data, golden.data, 1, 0.02);
    const meta = Object.fromEntries((await readPngTextChunks(out)).map((c) => [c.keyword, c.text]));
    expect(meta).toMatchObject({ task: 'edit', 'dit-version': 'v1.1', compat: 'current', 'cfg-truncate': '0.93', 'input-resize': 'lanczos', 'text-attention': 'sdpa' });
  });

  test('generate writes a PNG of the requested size; T2I parameters recorded', async () => {
    const out = join(dir, 't2i.png');
    const r = step1x(['generate', 'a red fox in the snow', '--model', MODEL, '--width', '48', '--height', '32', '--steps', '2', '-o', out, '--json', '--quiet']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const res = JSON.parse(r.stdout.trim());
    expect(res).toMatchObject({ task: 't2i', width: 48, height: 32, dit_version: 'v1.1' });
    const img = await readImage(out);
    expect([img.width, img.height]).toEqual([48, 32]);
    const meta = Object.fromEntries((await readPngTextChunks(out)).map((c) => [c.keyword, c.text]));
    expect(meta).toMatchObject({ task: 't2i', 'output-size': '48x32', instruction: 'a red fox in the snow' });
    expect(meta.negative).toMatch(/^worst quality, wrong limbs/); // the official T2I negative prompt
  });

  test('generate: sizes that are not multiples of 16 are a usage error naming the nearest valid sizes', () => {
    const r = step1x(['generate', 'x', '--model', MODEL, '--width', '1000']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--width 1000 is not a multiple of 16.*nearest valid: 992 or 1008/);
    const gif = step1x(['generate', 'x', '--model', MODEL, '-o', join(dir, 'x.gif')]);
    expect(gif.code).toBe(2); // refused before the models load
    expect(gif.stderr.split('\n')[0]).toMatch(/gif/);
    expect(() => t2iSide('height', '8')).toThrow(/multiple of 16 in \[16, 4096\]/);
    expect(() => t2iSide('height', '64px')).toThrow(/got "64px"/);
    expect(t2iSide('width', '1024')).toBe(1024);
    expect(defaultT2iOutput('A red fox, in the snow!')).toBe('a-red-fox-in-the-snow.png');
    expect(defaultT2iOutput('!!!')).toBe('generated.png');
  });

  test('a model directory with both DiT files uses v1.1 unless --version v1.0; contradictions are clear errors', async () => {
    const both = join(dir, 'both');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(both);
    for (const f of ['vae.safetensors', 'step1x.json', 'Qwen2.5-VL-7B-Instruct', DIT_FILE_OF['v1.1']]) symlinkSync(join(MODEL, f), join(both, f));
    symlinkSync(join(goldenCase('tiny_e2e'), 'model', DIT_FILE_OF['v1.0']), join(both, DIT_FILE_OF['v1.0']));
    expect(modelFilesInDir(both).dit).toBe(join(both, DIT_FILE_OF['v1.1']));
    expect(modelFilesInDir(both, both, { version: 'v1.0' }).dit).toBe(join(both, DIT_FILE_OF['v1.0']));
    const run = (extra: string[]) => step1x(['generate', 'a cat', '--model', both, '--width', '32', '--height', '32', '--steps', '1', '-o', join(dir, 'g.png'), '--json', '--quiet', ...extra]);
    const d = run([]);
    expect(d.code).toBe(0);
    expect(JSON.parse(d.stdout.trim()).dit_version).toBe('v1.1');
    const v10 = run(['--version', 'v1.0']);
    expect(v10.code).toBe(0);
    expect(JSON.parse(v10.stdout.trim()).dit_version).toBe('v1.0');
    // only v1.1 present, v1.0 asked for: named, exit 4 (model files)
    const only = step1x(['generate', 'a cat', '--model', MODEL, '--version', 'v1.0', '-o', join(dir, 'h.png')]);
    expect(only.code).toBe(4);
    expect(only.stderr).toMatch(/--version v1\.0: .* holds step1x-edit-v1p1-official\.safetensors \(v1\.1\) but not step1x-edit-i1258\.safetensors/);
    // v1.1 weights under the v1.0 file name: the weights tell, and the contradiction is named
    const renamed = join(dir, 'renamed');
    mkdirSync(renamed);
    for (const f of ['vae.safetensors', 'step1x.json', 'Qwen2.5-VL-7B-Instruct']) symlinkSync(join(MODEL, f), join(renamed, f));
    copyFileSync(join(MODEL, DIT_FILE_OF['v1.1']), join(renamed, DIT_FILE_OF['v1.0']));
    const bad = step1x(['generate', 'a cat', '--model', renamed, '--version', 'v1.0', '--width', '32', '--height', '32', '--steps', '1', '-o', join(dir, 'i.png')]);
    expect(bad.code).toBe(4);
    expect(bad.stderr).toMatch(/the weights are v1\.1 \(no connector\.scale_factor\), but v1\.0 was asked for \(--version\)/);
    const badv = step1x(['edit', photo, 'x', '--model', MODEL, '--version', '2']);
    expect(badv.code).toBe(2);
    expect(badv.stderr).toMatch(/--version must be v1\.0, v1\.1 or v1\.2, got "2"/);
    const badc = step1x(['edit', photo, 'x', '--model', MODEL, '--compat', '2024']);
    expect(badc.code).toBe(2);
    expect(badc.stderr).toMatch(/--compat must be one of current, 2025-05/);
  });

  test('inspect on a model directory says which version it holds', () => {
    const r = step1x(['inspect', MODEL]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/v1\.1/);
  });
});

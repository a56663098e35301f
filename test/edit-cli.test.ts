/**
 * `step1x edit` / `step1x batch` as a user runs them (spawned processes on the built CLI): the tiny
 * end-to-end model reproduces the official output image (full size and --native-size, to a file and to
 * stdout) with every PNG metadata key recorded; batch outputs equal per-image edits (fixed --noise); EXIF rotation and
 * --ignore-exif by pixel order; --seed equals the independent reference noise; --sample-encode,
 * --vram-budget, bad options; errors give one line and their exit code; an interrupt (during sampling,
 * and while the temporary output exists) ends through the handler (its line, 130 / SIGINT) and leaves nothing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import sharp from 'sharp';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { decodeImage, encodePng, readImage, type RgbImage } from '../src/io/image.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { refBf16, refRandn } from './util/ref-rng.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const CASE = goldenCase('tiny_e2e');
const MODEL = join(CASE, 'model');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
const VERSION = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')).version as string;

// Dawn's native Warning: lines are kept off stderr by the launcher (issue 13): nothing is filtered here
const clean = (s: string) => s.split('\n').filter((l) => l).join('\n');

function step1x(args: string[], extraEnv: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: 600_000 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: clean(r.stderr) };
}

/** The same, with stdout as bytes (for `-o -`). */
function step1xBinary(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, timeout: 600_000, maxBuffer: 1 << 28 });
  return { code: r.status, stdout: new Uint8Array(r.stdout), stderr: clean(r.stderr.toString('utf8')) };
}

/** Every text chunk of a PNG, parsed here from the bytes (tEXt, zTXt, iTXt), keyword → text; duplicates fail. */
function pngText(bytes: Uint8Array): Record<string, string> {
  const b = Buffer.from(bytes);
  expect(b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))).toBe(true);
  const out: Record<string, string> = {};
  for (let p = 8; p < b.length; ) {
    const len = b.readUInt32BE(p), type = b.toString('latin1', p + 4, p + 8), d = b.subarray(p + 8, p + 8 + len);
    p += 12 + len;
    if (type !== 'tEXt' && type !== 'zTXt' && type !== 'iTXt') continue;
    const z = d.indexOf(0);
    const key = d.toString('latin1', 0, z);
    let text: string;
    if (type === 'tEXt') text = d.toString('latin1', z + 1);
    else if (type === 'zTXt') text = inflateSync(d.subarray(z + 2)).toString('latin1');
    else {
      const compressed = d[z + 1] === 1;
      const lang = d.indexOf(0, z + 3), tk = d.indexOf(0, lang + 1);
      const body = d.subarray(tk + 1);
      text = (compressed ? inflateSync(body) : body).toString('utf8');
    }
    if (key in out) throw new Error(`PNG text keyword "${key}" appears twice`);
    out[key] = text;
  }
  return out;
}

/** u8 images: same size, max |diff| ≤ maxDiff on at most `frac` of the values (numbers in the failure). */
function expectClose(what: string, got: RgbImage, want: { data: Uint8Array; width: number; height: number }, maxDiff = 0, frac = 0): void {
  expect([what, got.width, got.height]).toEqual([what, want.width, want.height]);
  let max = 0, differ = 0;
  for (let i = 0; i < got.data.length; i++) {
    const d = Math.abs(got.data[i] - want.data[i]);
    if (d) differ++;
    if (d > max) max = d;
  }
  if (max > maxDiff || differ / got.data.length > frac)
    throw new Error(`${what}: max |diff| ${max} (≤ ${maxDiff}), differing fraction ${(differ / got.data.length).toFixed(4)} (≤ ${frac})`);
}

function differs(a: RgbImage, b: RgbImage): number {
  let n = 0;
  for (let i = 0; i < Math.min(a.data.length, b.data.length); i++) if (a.data[i] !== b.data[i]) n++;
  return n + Math.abs(a.data.length - b.data.length);
}

let dir = '';
let photoPath = '';
let noisePath = '';
let golden: RgbImage;
let goldenSmall: RgbImage;
let photo: RgbImage;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-edit-'));
  const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  photo = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  photoPath = join(dir, 'photo.png');
  writeFileSync(photoPath, encodePng(photo));
  noisePath = join(dir, 'noise.safetensors');
  await writeSafetensors(noisePath, { noise: { dtype: 'F32', shape: [...io.tensors.get('in.noise')!.shape], data: await io.readF32('in.noise') } });
  const [gh, gw] = io.tensors.get('out.rgb_u8')!.shape;
  golden = { width: gw, height: gh, data: await io.readBytes('out.rgb_u8') };
  const [sh, sw] = io.tensors.get('out.rgb_small_u8')!.shape;
  goldenSmall = { width: sw, height: sh, data: await io.readBytes('out.rgb_small_u8') };
  await io.close();
});

// tiny_e2e was made by the May 2025 official code (bicubic input, no CFG truncation, flash text attention)
const SPEC = ['--size', '80', '--steps', '4', '--cfg', '6', '--compat', '2025-05'];
const PROMPT = 'Make the sign say "HELLO WORLD" and add falling snow';

test('edit on the tiny model reproduces the official image (u8 ±1 on ≤ 2 %); every PNG metadata key recorded', async () => {
  const out = join(dir, 'out.png');
  const r = step1x(['edit', photoPath, PROMPT, '--model', MODEL, ...SPEC, '--noise', noisePath, '-o', out, '--json', '--quiet']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = JSON.parse(r.stdout.trim());
  expect(res).toMatchObject({ output: out, seed: 42, width: 120, height: 90, working_size: [80, 64] });
  expect(res.peak_rss_bytes).toBeGreaterThan(0);
  expect(res.peak_gpu_bytes).toBeGreaterThan(0);
  expectClose('out.rgb_u8', await readImage(out), golden, 1, 0.02);
  expect(pngText(readFileSync(out))).toEqual({
    'step1x:version': VERSION,
    model: 'step1x-edit-i1258.safetensors',
    task: 'edit',
    instruction: PROMPT,
    negative: '',
    seed: `42 (noise from ${noisePath})`,
    steps: '4',
    cfg: '6',
    'cfg-truncate': '1',
    'dit-version': 'v1.0',
    compat: '2025-05',
    size: '80',
    'working-size': '80x64',
    'input-resize': 'bicubic',
    'vae-encode': 'mean',
    'text-attention': 'flash',
    models: 'step1x-edit-i1258.safetensors, vae.safetensors, Qwen2.5-VL-7B-Instruct',
    // the A1111-style summary (tEXt) that image viewers and web UIs read
    parameters: `${PROMPT}\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 80x64, Model: step1x-edit-i1258, Size level: 80, VAE encode: mean, Version: step1x ${VERSION}`,
  });
  const meta = step1x(['inspect', out]);
  expect(meta.code).toBe(0);
  expect(meta.stdout).toContain('HELLO WORLD');
});

test('--native-size -o -: the working-size image on stdout is the official out.rgb_small_u8; --json goes to stderr', async () => {
  const r = step1xBinary(['edit', photoPath, PROMPT, '--model', MODEL, ...SPEC, '--noise', noisePath, '--native-size', '-o', '-', '--json', '--quiet']);
  expect(r.code).toBe(0);
  const res = JSON.parse(r.stderr.trim());
  expect(res).toMatchObject({ output: '-', width: 80, height: 64, working_size: [80, 64] });
  expectClose('out.rgb_small_u8', await decodeImage(r.stdout), goldenSmall, 1, 0.02);
  expect(pngText(r.stdout)).toMatchObject({ 'working-size': '80x64', cfg: '6', steps: '4' });
});

// ---- batch, EXIF, seed, sample-encode, budget: one-step edits compared with each other ---------------

describe('one-step edits', () => {
  const ONE = ['--model', MODEL, '--size', '80', '--steps', '1', '--cfg', '6', '--quiet'];
  const SEED = 7;
  const I1 = 'add snow', I2 = '把天空变成紫色';
  let w = '';
  let rawPng = '', mirrorPng = '', rotPng = '', exifJpg = '', seedNoise = '';
  const outs: Record<string, RgbImage> = {};
  const edit = async (name: string, input: string, instruction: string, extra: string[]) => {
    const o = join(w, `out-${name}.png`);
    const r = step1x(['edit', input, instruction, ...ONE, ...extra, '-o', o]);
    if (r.code !== 0) throw new Error(`${name}: exit ${r.code}: ${r.stderr}`);
    expect(r.stderr).toBe('');
    outs[name] = await readImage(o);
    return { path: o, img: outs[name], text: pngText(readFileSync(o)) };
  };

  beforeAll(async () => {
    w = mkdtempSync(join(tmpdir(), 'step1x-one-'));
    // A JPEG of the photo whose EXIF says "rotate 90° clockwise"; raw.png = its stored pixels, rot.png =
    // those rotated here, mirror.png = mirrored (same size as raw, so one --noise file fits both).
    const jpg = await sharp(Buffer.from(photo.data), { raw: { width: photo.width, height: photo.height, channels: 3 } }).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
    exifJpg = join(w, 'photo-exif6.jpg');
    writeFileSync(exifJpg, jpg);
    const stored = await decodeImage(jpg, { ignoreExif: true });
    const { width: W, height: H, data } = stored;
    const rot = new Uint8Array(data.length), mir = new Uint8Array(data.length);
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const s = (y * W + x) * 3;
        rot.set(data.subarray(s, s + 3), (x * H + (H - 1 - y)) * 3); // (x, y) → (H-1-y, x) in the H-wide image
        mir.set(data.subarray(s, s + 3), (y * W + (W - 1 - x)) * 3);
      }
    rawPng = join(w, 'raw.png');
    writeFileSync(rawPng, encodePng({ width: W, height: H, data }));
    rotPng = join(w, 'rot.png');
    writeFileSync(rotPng, encodePng({ width: H, height: W, data: rot }));
    mirrorPng = join(w, 'mirror.png');
    writeFileSync(mirrorPng, encodePng({ width: W, height: H, data: mir }));
    // the documented --seed noise for 120×90 at size 80 (latent 8×10), from the independent reference
    seedNoise = join(w, 'seed7.safetensors');
    await writeSafetensors(seedNoise, { noise: { dtype: 'F32', shape: [1, 16, 8, 10], data: refBf16(refRandn(16 * 8 * 10, SEED)) } });
  });

  test('batch: each output equals a per-image edit with its own instruction and the same noise (batch --seed, edits --noise)', async () => {
    // batch has no --noise: it draws each image's noise from --seed; the per-image references get that
    // noise as a file computed by the independent reference RNG, so this also checks batch's seeding.
    const inDir = join(w, 'in'), outDir = join(w, 'out');
    spawnSync('mkdir', ['-p', inDir, outDir]);
    spawnSync('cp', [rawPng, join(inDir, 'a.png')]);
    spawnSync('cp', [mirrorPng, join(inDir, 'b.jpg.png')]);
    const manifest = join(inDir, 'm.json');
    writeFileSync(manifest, JSON.stringify({ 'a.png': I1, 'b.jpg.png': I2 }));
    const r = step1x(['batch', manifest, '--input-dir', inDir, '--output-dir', outDir, ...ONE, '--seed', String(SEED), '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(readdirSync(outDir).sort()).toEqual(['a.png', 'b.jpg.png']);
    expect(r.stdout.trim().split('\n').map((l) => JSON.parse(l).output)).toEqual([join(outDir, 'a.png'), join(outDir, 'b.jpg.png')]);
    const a = await edit('batch-ref-a', rawPng, I1, ['--noise', seedNoise]);
    const b = await edit('batch-ref-b', mirrorPng, I2, ['--noise', seedNoise]);
    const ba = await readImage(join(outDir, 'a.png')), bb = await readImage(join(outDir, 'b.jpg.png'));
    expectClose('batch a.png vs edit', ba, a.img);
    expectClose('batch b.jpg.png vs edit', bb, b.img);
    expect(pngText(readFileSync(join(outDir, 'a.png')))).toMatchObject({ instruction: I1, seed: '7' });
    expect(pngText(readFileSync(join(outDir, 'b.jpg.png')))).toMatchObject({ instruction: I2, seed: '7' });
    const bad = step1x(['batch', manifest, '--input-dir', '/nonexistent', '--output-dir', outDir, '--model', MODEL]);
    expect(bad.code).toBe(3);
  });

  test('--seed N draws the documented noise: equal to --noise with the reference noise of N; metadata says the seed', async () => {
    const s = await edit('seed7', rawPng, I1, ['--seed', String(SEED)]);
    expectClose('--seed 7 vs reference noise', s.img, outs['batch-ref-a'] ?? (await edit('batch-ref-a', rawPng, I1, ['--noise', seedNoise])).img);
    expect(s.text.seed).toBe('7');
    // (a --seed that were ignored would draw the default seed 42's noise, not the reference noise of 7)
  });

  test('EXIF orientation 6 is applied (pixels = the edit of the rotated photo); --ignore-exif edits the stored pixels', async () => {
    const shown = await edit('exif', exifJpg, I1, ['--seed', String(SEED)]);
    const rot = await edit('rot', rotPng, I1, ['--seed', String(SEED)]);
    expect([shown.img.width, shown.img.height]).toEqual([90, 120]);
    expectClose('EXIF-rotated edit vs rotated photo', shown.img, rot.img);
    const ignored = await edit('exif-ignored', exifJpg, I1, ['--seed', String(SEED), '--ignore-exif']);
    expect([ignored.img.width, ignored.img.height]).toEqual([120, 90]);
    expectClose('--ignore-exif edit vs stored pixels', ignored.img, outs.seed7 ?? (await edit('seed7', rawPng, I1, ['--seed', String(SEED)])).img);
  });

  test('--sample-encode samples the VAE posterior: another image, recorded in the metadata', async () => {
    const s = await edit('sampled', rawPng, I1, ['--seed', String(SEED), '--sample-encode']);
    expect(s.text['vae-encode']).toBe('sample');
    const mean = outs.seed7 ?? (await edit('seed7', rawPng, I1, ['--seed', String(SEED)])).img;
    expect(differs(s.img, mean)).toBeGreaterThan(0);
  });

  // One spawn checks two things (each spawn loads the model and compiles every pipeline again): the
  // --sample-encode edit run a second time, with a budget, to stdout, is the same image.
  test('--vram-budget: parsed with units; the image on stdout (-o -) is unchanged (--sample-encode reproducible); below the floor exit 2 naming the bytes', async () => {
    const r = step1xBinary(['edit', rawPng, I1, ...ONE, '--seed', String(SEED), '--sample-encode', '--vram-budget', '1.5GiB', '-o', '-']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const sampled = outs.sampled ?? (await edit('sampled', rawPng, I1, ['--seed', String(SEED), '--sample-encode'])).img;
    expectClose('--sample-encode --vram-budget 1.5GiB -o - vs --sample-encode to a file', await decodeImage(r.stdout), sampled);
    // below the documented floor: refused before any model work, naming the bytes
    const small = step1x(['edit', rawPng, I1, ...ONE, '--vram-budget', '100kB', '-o', join(w, 'never.png')]);
    expect(small.code).toBe(2);
    expect(small.stderr.split('\n')).toHaveLength(1);
    expect(small.stderr).toMatch(/^step1x: error: --vram-budget "100kB" is 100000 bytes; at least 64 MiB is needed/);
    expect(existsSync(join(w, 'never.png'))).toBe(false);
  });
});

test.each([
  ['missing input', ['edit', '/nonexistent/in.png', 'x', '--model', MODEL], 3, /no such file/],
  ['not an image', ['edit', join(REPO_ROOT, 'package.json'), 'x', '--model', MODEL], 3, /package\.json/],
  ['missing weights', ['edit', 'PHOTO', 'x', '--model', '/tmp'], 4, /model files missing/],
  ['unwritable output', ['edit', 'PHOTO', 'x', '--model', MODEL, '-o', '/nonexistent-dir/out.png'], 7, /does not exist/],
  ['bad steps', ['edit', 'PHOTO', 'x', '--model', MODEL, '--steps', '0'], 2, /--steps/],
  ['negative seed', ['edit', 'PHOTO', 'x', '--model', MODEL, '--seed', '-1'], 2, /--seed must be a decimal integer/],
  ['fractional seed', ['edit', 'PHOTO', 'x', '--model', MODEL, '--seed', '1.5'], 2, /--seed must be a decimal integer/],
  ['unparsable budget', ['edit', 'PHOTO', 'x', '--model', MODEL, '--vram-budget', '12 parsecs'], 2, /--vram-budget: cannot parse "12 parsecs"/],
  ['zero budget', ['edit', 'PHOTO', 'x', '--model', MODEL, '--vram-budget', '0GB'], 2, /--vram-budget "0GB" is 0 bytes/],
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

// ---- interrupts ---------------------------------------------------------------------------------------

/**
 * Run an edit and send SIGINT once `when(stderr, files in its output dir)` holds. The process must end
 * through our handler: the "interrupted" line, status 130 (exit code, or the re-raised SIGINT), and an
 * empty output directory (no output, no temporary file).
 */
async function interrupt(when: (err: string, files: string[]) => boolean, extraEnv: Record<string, string> = {}, extra: string[] = []) {
  const sub = mkdtempSync(join(tmpdir(), 'step1x-kill-'));
  const out = join(sub, 'out.png');
  const child = spawn(process.execPath, [CLI, 'edit', photoPath, PROMPT, '--model', MODEL, ...SPEC, ...extra, '-o', out], { env: { ...env, ...extraEnv } });
  let err = '';
  let sent = false;
  let seen: string[] = [];
  const check = () => {
    if (sent) return;
    const files = readdirSync(sub);
    if (when(err, files)) {
      seen = files;
      sent = true;
      child.kill('SIGINT');
    }
  };
  const poll = setInterval(check, 5);
  child.stderr.on('data', (d) => {
    err += d;
    check();
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.on('exit', (c, s) => res([c, s])));
  clearInterval(poll);
  expect(sent).toBe(true);
  // The handler cleans up, prints its line and ends the process by re-raising SIGINT (the launcher passes
  // the child's end on), so the shell sees 130: exit code 130, or killed by SIGINT. The line and the empty
  // directory are what only the handler produces.
  const ended = code === 130 ? 'exit 130' : code === null && signal === 'SIGINT' && child.signalCode === 'SIGINT' ? 'SIGINT' : `code ${code}, signal ${signal}`;
  expect(['exit 130', 'SIGINT']).toContain(ended);
  expect(err).toMatch(/step1x: interrupted \(SIGINT\); no output written/);
  expect(readdirSync(sub)).toEqual([]);
  return { seen, err };
}

test('interrupting an edit during sampling: ended by the handler (130), the "interrupted" line, no file', async () => {
  await interrupt((err) => /sampling( step)? \d+\/\d+/.test(err)); // the progress line of a sampling step
});

test('interrupting while the temporary output file exists: it is removed, ended by the handler (130), the "interrupted" line', async () => {
  // STEP1X_TEST_HOLD_OUTPUT_MS holds the finished temporary file before its rename (test seam in output.ts)
  const r = await interrupt((_e, files) => files.some((f) => f.endsWith('.partial')), { STEP1X_TEST_HOLD_OUTPUT_MS: '60000' }, ['--steps', '1']);
  expect(r.seen).toEqual([expect.stringMatching(/\.partial$/)]);
});

/**
 * Region masks (src/pipeline/mask.ts):
 *  - mask preparation (luminance, resize, feather, latent grid, packed layout) against plain f64
 *    references written differently here (direct 2-D sums instead of separable passes);
 *  - the FluxKontextInpaint blend through a whole Euler loop with a feathered mask against an f64 loop;
 *  - the pixel composite against its f64 formula;
 *  - on the real tiny DiT: an all-white mask equals the unmasked run bit for bit, an all-black mask ends
 *    exactly on the source latent;
 *  - the whole edit on the tiny model: all-black returns the input pixels exactly, all-white equals the
 *    unmasked edit.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { modelFilesInDir } from '../src/io/model-files.js';
import { blendLatent, compositeImage, featherMask, maskFromRgb, packedMask, prepareMask, resizeMask, type Mask } from '../src/pipeline/mask.js';
import { denoise, type Predictor } from '../src/pipeline/sampling.js';
import type { RgbImage } from '../src/io/resize.js';

afterAll(releaseGpu);

/** Deterministic pseudo-random in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function maskImage(W: number, H: number, f: (x: number, y: number) => number): RgbImage {
  const data = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) data.fill(f(x, y), (y * W + x) * 3, (y * W + x) * 3 + 3);
  return { width: W, height: H, data };
}

/** f64 reference resize: output pixel = ∫ source over its footprint (shrink) / bilinear on centres (grow). */
function refResize(m: Mask, W: number, H: number): Mask {
  const out = new Float64Array(W * H);
  // weight of source sample k for output o along an axis of n → size samples
  const weight = (n: number, size: number, o: number, k: number): number => {
    if (size <= n) {
      const s = n / size, a = o * s, b = (o + 1) * s;
      return Math.max(0, Math.min(b, k + 1) - Math.max(a, k)) / s;
    }
    const x = Math.min(n - 1, Math.max(0, (o + 0.5) * (n / size) - 0.5));
    if (n === 1) return 1;
    const k0 = Math.min(n - 2, Math.floor(x));
    return k === k0 ? 1 - (x - k0) : k === k0 + 1 ? x - k0 : 0;
  };
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      let s = 0;
      for (let sy = 0; sy < m.height; sy++) {
        const wy = weight(m.height, H, y, sy);
        if (!wy) continue;
        for (let sx = 0; sx < m.width; sx++) s += wy * weight(m.width, W, x, sx) * m.data[sy * m.width + sx];
      }
      out[y * W + x] = Math.min(1, Math.max(0, s));
    }
  return { width: W, height: H, data: out };
}

/** f64 reference feather: direct 2-D Gaussian (σ = px/2, taps ±ceil(px)), clamped edges, normalised. */
function refFeather(m: Mask, px: number): Mask {
  const r = Math.ceil(px), sg = px / 2;
  const out = new Float64Array(m.width * m.height);
  let norm = 0;
  for (let i = -r; i <= r; i++) for (let j = -r; j <= r; j++) norm += Math.exp(-(i * i + j * j) / (2 * sg * sg));
  for (let y = 0; y < m.height; y++)
    for (let x = 0; x < m.width; x++) {
      let s = 0;
      for (let i = -r; i <= r; i++)
        for (let j = -r; j <= r; j++) {
          const yy = Math.min(m.height - 1, Math.max(0, y + i)), xx = Math.min(m.width - 1, Math.max(0, x + j));
          s += Math.exp(-(i * i + j * j) / (2 * sg * sg)) * m.data[yy * m.width + xx];
        }
      out[y * m.width + x] = Math.min(1, Math.max(0, s / norm));
    }
  return { width: m.width, height: m.height, data: out };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths ${a.length} vs ${b.length}`);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function expectClose(name: string, a: ArrayLike<number>, b: ArrayLike<number>, tol: number): void {
  const d = maxDiff(a, b);
  if (!(d <= tol)) throw new Error(`${name}: max |diff| ${d} > ${tol}`);
}

const R = rng(7);
// a 37×23 mask: a soft disc plus noise, grey levels included
const MASK_IMG = maskImage(37, 23, (x, y) => (Math.hypot(x - 20, y - 11) < 8 ? 255 : Math.floor(R() * 40)));

test('luminance, resize (shrink and grow) and feather match direct f64 references', () => {
  const rgb = { width: 2, height: 1, data: Uint8Array.of(255, 0, 0, 10, 200, 30) };
  expectClose('luminance', maskFromRgb(rgb).data, [(299 * 255) / 255000, (299 * 10 + 587 * 200 + 114 * 30) / 255000], 1e-15);
  const m = maskFromRgb(MASK_IMG);
  for (const [W, H] of [[60, 45], [10, 8], [37, 23], [5, 3], [74, 11]] as const) expectClose(`resize to ${W}x${H}`, resizeMask(m, W, H).data, refResize(m, W, H).data, 1e-12);
  const photo = resizeMask(m, 40, 30);
  for (const px of [0.5, 1, 3, 6.5]) expectClose(`feather ${px}`, featherMask(photo, px).data, refFeather(photo, px).data, 1e-12);
  expect(featherMask(photo, 0).data).toEqual(photo.data);
  // an all-white / all-black mask stays exactly 1 / 0 through resize and feather
  expect(prepareMask(maskImage(9, 7, () => 255), 120, 90, 4).data.every((v) => v === 1)).toBe(true);
  expect(prepareMask(maskImage(9, 7, () => 0), 120, 90, 4).data.every((v) => v === 0)).toBe(true);
});

test('packed layout: token (i, j), value c·4 + ph·2 + pw is latent pixel (2i + ph, 2j + pw)', () => {
  const lm: Mask = { width: 4, height: 6, data: Float64Array.from({ length: 24 }, (_, k) => k / 24) };
  const p = packedMask(lm, 16);
  expect(p.length).toBe(2 * 3 * 64);
  for (let i = 0; i < 3; i++)
    for (let j = 0; j < 2; j++)
      for (let c = 0; c < 16; c++)
        for (let ph = 0; ph < 2; ph++)
          for (let pw = 0; pw < 2; pw++) expect(p[(i * 2 + j) * 64 + c * 4 + ph * 2 + pw]).toBe(Math.fround(lm.data[(2 * i + ph) * 4 + 2 * j + pw]));
});

test('feathered mask: the blend after every Euler step matches an f64 loop', async () => {
  const N = 20, C = 64, L = 2 * N, steps = 7;
  const noise = Float32Array.from({ length: N * C }, () => R() * 2 - 1);
  const z = Float32Array.from({ length: N * C }, () => R() * 2 - 1);
  const img = new Float32Array(L * C);
  img.set(noise, 0);
  img.set(z, N * C);
  // a feathered mask on a 10×8 latent grid = 5×4 = 20 packed tokens
  const photoMask = prepareMask(MASK_IMG, 90, 40, 5);
  const lat = resizeMask(photoMask, 10, 8);
  const m = packedMask(lat).subarray(0, N * C);
  expect(Math.min(...m)).toBeLessThan(0.2);
  expect(Math.max(...m)).toBeGreaterThan(0.8);
  expect(m.some((v) => v > 0.05 && v < 0.95)).toBe(true); // really feathered
  // a smooth deterministic "DiT": velocity depends on the state and t
  const velocity = (x: ArrayLike<number>, t: number, i: number) => Math.sin(0.7 * x[i] + 3 * t + 0.01 * i) - 0.3 * x[i];
  const predictor: Predictor = {
    predict: async (x, B, t) => {
      const out = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = velocity(x, t, i % (L * C));
      void B;
      return out;
    },
  };
  const ts = Float32Array.from({ length: steps + 1 }, (_, k) => 1 - k / steps);
  const got = await denoise(predictor, img, 1, { timesteps: ts, cfgGuidance: -1, channels: C, afterStep: (x, tn) => blendLatent(x, m, noise, z, tn) });
  // f64 reference
  const x = Array.from(img, Number);
  for (let s = 0; s < steps; s++) {
    const t = ts[s], tn = ts[s + 1];
    const v = x.map((_, i) => velocity(x, t, i));
    for (let i = 0; i < N * C; i++) x[i] += (tn - t) * v[i];
    for (let i = 0; i < N * C; i++) x[i] = m[i] * x[i] + (1 - m[i]) * (tn * noise[i] + (1 - tn) * z[i]);
  }
  expectClose('blended latent', got, x.slice(0, N * C), 2e-5);
  // at t_next = 0 a black region is exactly the source latent
  for (let i = 0; i < N * C; i++) if (m[i] === 0) expect(got[i]).toBe(z[i]);
});

test('pixel composite = round(m·edited + (1 − m)·input), exact at m = 0 and m = 1', () => {
  const W = 30, H = 20;
  const rnd = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(R() * 256));
  const edited = { width: W, height: H, data: rnd(W * H * 3) }, input = { width: W, height: H, data: rnd(W * H * 3) };
  const m = prepareMask(MASK_IMG, W, H, 2);
  const out = compositeImage(edited, input, m);
  for (let p = 0; p < W * H; p++)
    for (let c = 0; c < 3; c++) {
      const i = p * 3 + c, a = m.data[p];
      expect(out.data[i]).toBe(Math.round(a * edited.data[i] + (1 - a) * input.data[i]));
    }
  expect(compositeImage(edited, input, prepareMask(maskImage(3, 3, () => 0), W, H)).data).toEqual(input.data);
  expect(compositeImage(edited, input, prepareMask(maskImage(3, 3, () => 255), W, H)).data).toEqual(edited.data);
});

test('real tiny DiT: all-white mask = unmasked run bit for bit; all-black ends exactly on the source latent', async () => {
  const g = await getGpu();
  const CASE = goldenCase('teacache_tiny');
  const spec = JSON.parse(readFileSync(join(CASE, 'case.json'), 'utf8')).spec;
  const { Step1XEdit } = await import('../src/models/dit.js');
  const { prepare, imageSeqLen } = await import('../src/pipeline/prepare.js');
  const { getSchedule } = await import('../src/pipeline/sampling.js');
  const model = await Step1XEdit.open(g, join(CASE, 'dit.safetensors'), { dit: spec.dit, connector: spec.connector });
  const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
  try {
    const ls = [...io.tensors.get('in.noise')!.shape];
    const [B, T] = io.tensors.get('in.llm_embedding')!.shape;
    const p = prepare(await io.readF32('in.noise'), await io.readF32('in.latent_ref'), ls, B, T, 'v1.1');
    const L = 2 * p.h * p.w, NC = (L / 2) * p.channels;
    const ts = getSchedule(4, imageSeqLen(ls[2], ls[3]));
    const noise = p.img.subarray(0, NC), z = p.img.subarray(NC, 2 * NC);
    const run = async (m?: Float32Array) => {
      const pred = model.predictor({ llmEmbedding: await io.readF32('in.llm_embedding'), mask: await io.readF32('in.mask'), imgIds: p.imgIds, txtIds: p.txtIds, T, L });
      try {
        return await denoise(pred, p.img, B, { timesteps: ts, cfgGuidance: 5, channels: p.channels, afterStep: m ? (x, tn) => blendLatent(x, m, noise, z, tn) : undefined });
      } finally {
        pred.dispose();
      }
    };
    const plain = await run();
    const white = await run(new Float32Array(NC).fill(1));
    expect(Buffer.from(white.buffer).equals(Buffer.from(plain.buffer))).toBe(true);
    const black = await run(new Float32Array(NC));
    expect(Buffer.from(black.buffer).equals(Buffer.from(z.slice().buffer))).toBe(true);
  } finally {
    await io.close();
    await model.close();
  }
});

test('whole edit on the tiny model: all-black mask returns the input pixels exactly, all-white equals no mask', async () => {
  const g = await getGpu();
  const { EditPipeline } = await import('../src/pipeline/edit-pipeline.js');
  const dir = goldenCase('tiny_e2e');
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  const image = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  const noise = await io.readF32('in.noise');
  await io.close();
  const pipe = await EditPipeline.load(modelFilesInDir(join(dir, 'model')), { gpu: g });
  const req = { image, instruction: 'add snow', size: 80, steps: 2, cfg: 6, noise };
  const plain = await pipe.edit(req);
  const black = await pipe.edit({ ...req, mask: maskImage(13, 9, () => 0), maskFeather: 3 });
  expect(Buffer.from(black.image.data).equals(Buffer.from(image.data))).toBe(true);
  const white = await pipe.edit({ ...req, mask: maskImage(50, 50, () => 255) });
  expect(Buffer.from(white.image.data).equals(Buffer.from(plain.image.data))).toBe(true);
  expect(white.parameters.mask).toBe('50x50');
  expect(Buffer.from(plain.image.data).equals(Buffer.from(image.data))).toBe(false);
});

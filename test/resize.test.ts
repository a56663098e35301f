/**
 * Pillow-exact resize: bit-exactness against the u8 images the official PyTorch/Pillow code stored in
 * the goldens (qwen_processor fetched/resized, pipeline_tiny and tiny_e2e stage resizes), plus
 * unit properties (identity, constant images, NEAREST, tall images, argument errors).
 */
import { describe, expect, test, afterAll } from '@jest/globals';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { resize, precomputeCoeffs, type RgbImage, type ResampleFilter } from '../src/io/resize.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo, u8Image } from './util/golden-io.js';

const io = goldenIo();

/** counts of differing values and the max difference, printed on failure */
function compareU8(got: RgbImage, ref: RgbImage, label: string): { nDiff: number; maxDiff: number } {
  expect([got.height, got.width]).toEqual([ref.height, ref.width]);
  let nDiff = 0, maxDiff = 0;
  for (let i = 0; i < ref.data.length; i++) {
    const d = Math.abs(got.data[i] - ref.data[i]);
    if (d) nDiff++;
    if (d > maxDiff) maxDiff = d;
  }
  if (nDiff) console.log(`${label}: ${nDiff}/${ref.data.length} values differ, max ${maxDiff}`);
  return { nDiff, maxDiff };
}

describe('resize vs Pillow goldens (bit-exact)', () => {
  test('qwen_processor: roundtrip → fetched → resized', async () => {
    const f = await io('qwen_processor');
    for (const e of ['photo0000', 'tiny', 'wide_pipeline']) {
      const input = await u8Image(f, `in.${e}.image_u8`);
      const fetched = await u8Image(f, `mid.${e}.fetched_u8`);
      const got = resize(input, fetched.width, fetched.height, 'bicubic');
      expect(compareU8(got, fetched, `${e} fetched`)).toEqual({ nDiff: 0, maxDiff: 0 });
      if (f.tensors.has(`mid.${e}.resized_u8`)) {
        const resized = await u8Image(f, `mid.${e}.resized_u8`);
        const got2 = resize(fetched, resized.width, resized.height);
        expect(compareU8(got2, resized, `${e} resized`)).toEqual({ nDiff: 0, maxDiff: 0 });
      }
    }
  });

  test('pipeline_tiny: size_level resize and resize back', async () => {
    const f = await io('pipeline_tiny');
    const photo = await u8Image(f, 'in.photo_u8');
    const ref = await u8Image(f, 'stage1.ref_resized_u8');
    expect(compareU8(resize(photo, ref.width, ref.height), ref, 'stage1')).toEqual({ nDiff: 0, maxDiff: 0 });
    const small = await u8Image(f, 'stage10.rgb_small_u8');
    const out = await u8Image(f, 'out.rgb_u8');
    expect(compareU8(resize(small, out.width, out.height), out, 'out.rgb_u8')).toEqual({ nDiff: 0, maxDiff: 0 });
  });

  test('tiny_e2e: ref resize, qwen fetch/resize, output resize', async () => {
    const f = await io('tiny_e2e');
    const photo = await u8Image(f, 'in.photo_u8');
    const ref = await u8Image(f, 'mid.ref_resized_u8');
    expect(compareU8(resize(photo, ref.width, ref.height), ref, 'ref')).toEqual({ nDiff: 0, maxDiff: 0 });
    const fetched = await u8Image(f, 'mid.qwen_fetched_u8');
    expect(compareU8(resize(ref, fetched.width, fetched.height), fetched, 'fetched')).toEqual({ nDiff: 0, maxDiff: 0 });
    const qres = await u8Image(f, 'mid.qwen_resized_u8');
    expect(compareU8(resize(fetched, qres.width, qres.height), qres, 'qwen resized')).toEqual({ nDiff: 0, maxDiff: 0 });
    const small = await u8Image(f, 'out.rgb_small_u8');
    const out = await u8Image(f, 'out.rgb_u8');
    expect(compareU8(resize(small, out.width, out.height), out, 'out')).toEqual({ nDiff: 0, maxDiff: 0 });
  });
});

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}
function randomImage(w: number, h: number, seed: number): RgbImage {
  const r = seeded(seed);
  const data = new Uint8Array(w * h * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(r() * 256);
  return { width: w, height: h, data };
}

describe('resize properties', () => {
  const filters: ResampleFilter[] = ['nearest', 'box', 'bilinear', 'hamming', 'bicubic', 'lanczos'];

  test('same size returns an equal copy', () => {
    const img = randomImage(17, 5, 1);
    const out = resize(img, 17, 5);
    expect(out.data).toEqual(img.data);
    expect(out.data).not.toBe(img.data);
  });

  test.each(filters)('constant image stays constant (%s), odd sizes up and down', (flt) => {
    for (const [w, h, ow, oh] of [[17, 3, 5, 11], [1, 1, 255, 3], [255, 7, 1, 1], [33, 29, 34, 28]]) {
      const img = { width: w, height: h, data: new Uint8Array(w * h * 3).fill(173) };
      const out = resize(img, ow, oh, flt);
      expect(out.data.length).toBe(ow * oh * 3);
      for (const v of out.data) if (v !== 173) throw new Error(`${flt} ${w}x${h}->${ow}x${oh}: got ${v}, want 173`);
    }
  });

  test('fixed-point coefficients of each output pixel sum to ~2^22', () => {
    for (const [inS, outS] of [[100, 37], [37, 100], [1176, 196], [5, 5]]) {
      const c = precomputeCoeffs(inS, outS, { fn: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0), support: 1 });
      for (let i = 0; i < outS; i++) {
        let s = 0;
        for (let k = 0; k < c.ksize; k++) s += c.kk[i * c.ksize + k];
        expect(Math.abs(s - 2 ** 22)).toBeLessThanOrEqual(c.ksize);
        expect(c.bounds[2 * i] + c.bounds[2 * i + 1]).toBeLessThanOrEqual(inS);
      }
    }
  });

  test('NEAREST 2x upscale duplicates pixels', () => {
    const img = randomImage(3, 2, 7);
    const out = resize(img, 6, 4, 'nearest');
    for (let y = 0; y < 4; y++)
      for (let x = 0; x < 6; x++)
        for (let c = 0; c < 3; c++)
          expect(out.data[(y * 6 + x) * 3 + c]).toBe(img.data[((y >> 1) * 3 + (x >> 1)) * 3 + c]);
  });

  test('very tall image (H > 100 W) shrinks vertically first', () => {
    const img = randomImage(2, 250, 9);
    const out = resize(img, 3, 40);
    expect([out.width, out.height, out.data.length]).toEqual([3, 40, 360]);
  });

  test('bad arguments give clear errors', () => {
    const img = randomImage(4, 4, 3);
    expect(() => resize(img, 0, 4)).toThrow(/target size 0x4/);
    expect(() => resize({ width: 4, height: 4, data: new Uint8Array(5) }, 2, 2)).toThrow(/expected \[4,4,3\]/);
  });
});

describe('resize speed', () => {
  // ≈ 1 s on one idle core; the bound is loose because the test machine is shared
  test('12-megapixel photo to the size_level-512 input and the Qwen sizes in < 20 s', () => {
    const img = { width: 4000, height: 3000, data: randomFillSync(new Uint8Array(4000 * 3000 * 3)) };
    const t0 = performance.now();
    const a = resize(img, 576, 432);
    const b = resize(a, 588, 448);
    const c = resize(b, 532, 420);
    const ms = performance.now() - t0;
    console.log(`4000x3000 → 576x432 → 588x448 → 532x420: ${ms.toFixed(0)} ms`);
    expect(c.data.length).toBe(532 * 420 * 3);
    expect(ms).toBeLessThan(20000);
  });
});

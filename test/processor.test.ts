/**
 * Qwen2.5-VL image processor (Step1X's path) vs the goldens: u8 intermediates exact, pixel_values
 * atol 1e-5 (case.json), grids exact; smart_resize / input_process_image sizes.
 */
import { describe, expect, test, afterAll } from '@jest/globals';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { SafetensorsFile } from '../src/io/safetensors.js';
import type { RgbImage } from '../src/io/resize.js';
import {
  qwenProcessImage, smartResize, inputProcessSize, inputProcessImage, pyRound, toTensorToPilRoundtrip,
} from '../src/models/qwen25vl/processor.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo, u8Image } from './util/golden-io.js';

const io = goldenIo();
function expectSameU8(got: RgbImage, ref: RgbImage, label: string): void {
  expect([label, got.height, got.width]).toEqual([label, ref.height, ref.width]);
  let n = 0;
  for (let i = 0; i < ref.data.length; i++) if (got.data[i] !== ref.data[i]) n++;
  expect([label, n]).toEqual([label, 0]);
}
/** max |got[rows[r]] - ref[r]| over the selected rows */
function maxRowDiff(pv: Float32Array, rows: ArrayLike<number>, ref: Float32Array, rowLen: number): number {
  let m = 0;
  for (let r = 0; r < rows.length; r++)
    for (let j = 0; j < rowLen; j++) {
      const d = Math.abs(pv[rows[r] * rowLen + j] - ref[r * rowLen + j]);
      if (!(d <= m)) m = d; // NaN propagates
    }
  return m;
}

describe('qwen_processor golden', () => {
  const caseJson = JSON.parse(readFileSync(join(goldenCase('qwen_processor'), 'case.json'), 'utf8'));
  test.each(caseJson.spec.entries as string[])('%s', async (e) => {
    const f = await io('qwen_processor');
    const input = await u8Image(f, `in.${e}.image_u8`);
    const p = qwenProcessImage(input);
    if (f.tensors.has(`mid.${e}.roundtrip_u8`)) expectSameU8(p.roundtrip, await u8Image(f, `mid.${e}.roundtrip_u8`), 'roundtrip');
    expectSameU8(p.fetched, await u8Image(f, `mid.${e}.fetched_u8`), 'fetched');
    if (f.tensors.has(`mid.${e}.resized_u8`)) expectSameU8(p.resized, await u8Image(f, `mid.${e}.resized_u8`), 'resized');
    const grid = Array.from(await f.readI64AsNumber(`out.${e}.image_grid_thw`));
    expect(p.gridThw).toEqual(grid);
    const entry = caseJson.entries.find((x: { name: string }) => x.name === e);
    expect(p.numPatches).toBe(entry.num_patches);
    expect(p.numImageTokens).toBe(entry.num_merged_tokens);
    let rows: ArrayLike<number>, ref: Float32Array;
    if (f.tensors.has(`out.${e}.pixel_values_rows`)) {
      rows = await f.readI64AsNumber(`in.${e}.pixel_values_row_index`);
      ref = await f.readF32(`out.${e}.pixel_values_rows`);
    } else {
      ref = await f.readF32(`out.${e}.pixel_values`);
      rows = Array.from({ length: p.numPatches }, (_, i) => i);
    }
    const d = maxRowDiff(p.pixelValues, rows, ref, 1176);
    if (d > 1e-5 || process.env.SHOW_DIFFS) console.log(`${e}: pixel_values max |diff| ${d} (atol 1e-5)`);
    expect(d).toBeLessThanOrEqual(1e-5);
    // whole-tensor checksum (the case stores the f64 sum of all values)
    let sum = 0;
    for (const v of p.pixelValues) sum += v;
    expect(Math.abs(sum - entry.pixel_values_sum)).toBeLessThan(1e-3 * Math.max(1, Math.abs(entry.pixel_values_sum)) * 1e-3);
  });
});

describe('tiny_e2e image path', () => {
  test('photo → input_process_image → processor', async () => {
    const f = await io('tiny_e2e');
    const cj = JSON.parse(readFileSync(join(goldenCase('tiny_e2e'), 'case.json'), 'utf8'));
    const photo = await u8Image(f, 'in.photo_u8');
    const ref = inputProcessImage(photo, cj.spec.size_level);
    expectSameU8(ref, await u8Image(f, 'mid.ref_resized_u8'), 'ref');
    const p = qwenProcessImage(ref, { minPixels: cj.spec.processor.min_pixels, maxPixels: cj.spec.processor.max_pixels });
    expectSameU8(p.fetched, await u8Image(f, 'mid.qwen_fetched_u8'), 'fetched');
    expectSameU8(p.resized, await u8Image(f, 'mid.qwen_resized_u8'), 'resized');
    expect(p.gridThw).toEqual(Array.from(await f.readI64AsNumber('mid.image_grid_thw')));
    const rows = await f.readI64AsNumber('in.pixel_values_row_index');
    const d = maxRowDiff(p.pixelValues, rows, await f.readF32('mid.pixel_values_rows'), 1176);
    expect(d).toBeLessThanOrEqual(1e-5);
    let sum = 0;
    for (const v of p.pixelValues) sum += v;
    const refSum = (await f.readF32('mid.pixel_values_sum'))[0];
    expect(Math.abs(sum - refSum)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(refSum)) + 1e-2);
  });
});

describe('sizes', () => {
  test('pyRound is round-half-even', () => {
    expect([0.5, 1.5, 2.5, 3.5, 2.4999, 2.5001].map(pyRound)).toEqual([0, 2, 2, 4, 2, 3]);
  });
  test('input_process_image sizes of the goldens', () => {
    expect(inputProcessSize(1024, 1536, 512)).toEqual([416, 624]);
    expect(inputProcessSize(1600, 300, 512)).toEqual([1168, 208]);
    expect(inputProcessSize(100, 150, 64)).toEqual([48, 64]);
    expect(inputProcessSize(120, 90, 80)).toEqual([80, 64]);
    expect(() => inputProcessSize(4000, 10, 64)).toThrow(/too elongated/);
  });
  test('smart_resize of the golden entries', () => {
    expect(smartResize(624, 416, 28, 3136, 16384 * 784, 'fetch')).toEqual([616, 420]);
    expect(smartResize(616, 420)).toEqual([588, 392]);
    expect(smartResize(30, 40, 28, 3136, 16384 * 784, 'fetch')).toEqual([56, 84]);
    expect(smartResize(56, 84)).toEqual([392, 560]);
    expect(smartResize(196, 1176)).toEqual([196, 1176]);
    // outputs are multiples of 28 (as in Python, the floor/ceil branches may land slightly outside
    // [min_pixels, max_pixels] for extreme aspect ratios)
    for (const [h, w] of [[28, 28], [1000, 37], [4000, 3000], [56, 5600], [999, 1001]]) {
      const [rh, rw] = smartResize(h, w);
      expect([rh % 28, rw % 28]).toEqual([0, 0]);
      expect(rh * rw).toBeGreaterThan(0);
    }
    expect(() => smartResize(10, 2500)).toThrow(/aspect ratio/);
  });
  test('to_tensor → ToPILImage round trip is the identity on u8', () => {
    const data = new Uint8Array(256 * 3).map((_, i) => i % 256);
    expect(toTensorToPilRoundtrip({ width: 256, height: 1, data }).data).toEqual(data);
  });
});

describe('qwen_vl_tiny cases (smaller min/max pixels): full pixel_values', () => {
  test.each(['qwen_vl_tiny', 'qwen_vl_tiny_mask'])('%s', async (c) => {
    const f = await io(c);
    const cj = JSON.parse(readFileSync(join(goldenCase(c), 'case.json'), 'utf8'));
    const p = qwenProcessImage(await u8Image(f, 'in.image_u8'), {
      minPixels: cj.spec.processor.min_pixels, maxPixels: cj.spec.processor.max_pixels,
    });
    expect(p.gridThw).toEqual(Array.from(await f.readI64AsNumber('in.image_grid_thw')));
    const ref = await f.readF32('in.pixel_values');
    expect(ref.length).toBe(p.pixelValues.length);
    const rows = Array.from({ length: p.numPatches }, (_, i) => i);
    expect(maxRowDiff(p.pixelValues, rows, ref, 1176)).toBeLessThanOrEqual(1e-5);
  });
});

describe('golden kind qwen_processor (with a minimal context)', () => {
  test('emits every out.* of the case within its tolerance', async () => {
    const { run } = await import('../src/golden/kinds/qwen_processor.js');
    const dir = goldenCase('qwen_processor');
    const cj = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
    const f = await io('qwen_processor');
    const emitted = new Map<string, { data: ArrayLike<number>; shape: number[] }>();
    await run({
      caseDir: dir, spec: cj.spec, io: f,
      inputInt: async (n) => Int32Array.from(await f.readI64AsNumber(n)),
      has: (n) => f.tensors.has(n),
      emit: (n, data, shape) => void emitted.set(n, { data, shape }),
      log: () => undefined,
    });
    for (const [name, info] of f.tensors) {
      if (name.startsWith('in.')) continue;
      const got = emitted.get(name);
      expect([name, got !== undefined]).toEqual([name, true]);
      expect(got!.shape).toEqual(info.shape);
      const ref = info.dtype === 'U8' ? await f.readBytes(name) : info.dtype === 'I64' ? await f.readI64AsNumber(name) : await f.readF32(name);
      let m = 0;
      for (let i = 0; i < ref.length; i++) m = Math.max(m, Math.abs(got!.data[i] - ref[i]));
      expect([name, m <= (info.dtype === 'F32' ? 1e-5 : 0)]).toEqual([name, true]);
    }
  });
});

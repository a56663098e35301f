/**
 * torch's uint8 antialiased bicubic (resizeTorchU8) against the v12_e2e_tiny golden: mid.ref_resized_u8
 * (80×64) → mid.qwen_resized_u8 (504×420), the resize inside Qwen2VLImageProcessorFast — byte-exact; and PIL's
 * bicubic on the same input differs (the slow processor the README rules out).
 */
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { resizeTorchU8 } from '../src/io/resize-torch.js';
import { resize } from '../src/io/resize.js';

test('v12_e2e_tiny: ref_resized_u8 → qwen_resized_u8 byte-exact', async () => {
  const io = await SafetensorsFile.open(join(goldenCase('v12_e2e_tiny'), 'io.safetensors'));
  try {
    const src = await io.readBytes('mid.ref_resized_u8'), ref = await io.readBytes('mid.qwen_resized_u8');
    const [h, w] = io.tensors.get('mid.ref_resized_u8')!.shape, [rh, rw] = io.tensors.get('mid.qwen_resized_u8')!.shape;
    const img = { width: w, height: h, data: Uint8Array.from(src) };
    const got = resizeTorchU8(img, rw, rh).data;
    let diff = 0, max = 0;
    for (let i = 0; i < ref.length; i++) if (got[i] !== ref[i]) { diff++; max = Math.max(max, Math.abs(got[i] - ref[i])); }
    const pil = resize(img, rw, rh, 'bicubic').data;
    let pdiff = 0;
    for (let i = 0; i < ref.length; i++) if (pil[i] !== ref[i]) pdiff++;
    process.stderr.write(`  torch u8 AA bicubic: ${diff}/${ref.length} differ (max ${max}); PIL bicubic: ${pdiff} differ\n`);
    expect(diff).toBe(0);
    expect(pdiff).toBeGreaterThan(0);
  } finally {
    await io.close();
  }
});

test('downscale and identity', () => {
  const data = Uint8Array.from({ length: 37 * 23 * 3 }, (_, i) => (i * 97) % 256);
  const img = { width: 37, height: 23, data };
  expect(resizeTorchU8(img, 37, 23).data).toEqual(data);
  const small = resizeTorchU8(img, 11, 7);
  expect(small.data.length).toBe(11 * 7 * 3);
});

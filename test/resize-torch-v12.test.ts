/**
 * PyTorch's antialiased resizes of v1.2 against v12_e2e_tiny: the fast Qwen image processor's uint8 bicubic
 * (mid.ref_resized_u8 → mid.qwen_resized_u8, u8 ±1 on ≤ 0.5 %) — where PIL's bicubic is not enough — and
 * the VAE input, bilinear from the original photo (in.photo_u8 → mid.vae_input, atol 1e-4).
 */
import { resizeTorchU8 } from '../src/io/resize-torch.js';
import { resizeTorchF32Bilinear } from '../src/io/resize-torch-f32.js';
import { resize } from '../src/io/resize.js';
import { goldenIo, u8Image } from './util/golden-io.js';

const io = goldenIo();

function u8Diff(a: Uint8Array, b: Uint8Array): { max: number; frac: number } {
  let max = 0, n = 0;
  for (let i = 0; i < b.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    if (d) n++;
  }
  return { max, frac: n / b.length };
}

test('uint8 bicubic antialias: mid.qwen_resized_u8 within ±1 on 0.5 %, closer than PIL', async () => {
  const f = await io('v12_e2e_tiny');
  const src = await u8Image(f, 'mid.ref_resized_u8'), want = await u8Image(f, 'mid.qwen_resized_u8');
  const got = resizeTorchU8(src, want.width, want.height, 'bicubic');
  const d = u8Diff(got.data, want.data), pil = u8Diff(resize(src, want.width, want.height, 'bicubic').data, want.data);
  process.stderr.write(`torch u8 bicubic: max ${d.max}, ${(100 * d.frac).toFixed(3)} % differ; PIL bicubic: max ${pil.max}, ${(100 * pil.frac).toFixed(3)} %\n`);
  expect(d.max).toBeLessThanOrEqual(1);
  expect(d.frac).toBeLessThanOrEqual(0.005);
});

test('float bilinear antialias of the original photo: mid.vae_input within atol 1e-4', async () => {
  const f = await io('v12_e2e_tiny');
  const photo = await u8Image(f, 'in.photo_u8');
  const want = await f.readF32('mid.vae_input'); // [1, 3, 64, 80] in [-1, 1]
  const planes = new Float32Array(3 * photo.height * photo.width);
  for (let c = 0; c < 3; c++) for (let p = 0; p < photo.width * photo.height; p++) planes[c * photo.width * photo.height + p] = Math.fround(Math.fround(photo.data[p * 3 + c] / 255) * 2 - 1);
  const got = resizeTorchF32Bilinear(planes, photo.height, photo.width, 64, 80);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  process.stderr.write(`vae input: max abs diff ${worst}\n`);
  expect(worst).toBeLessThanOrEqual(1e-4);
});

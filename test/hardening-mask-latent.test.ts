/**
 * Issue 21, group 6: a --mask far larger than the photo is refused from its header before any pixel is
 * decoded (a 10000² 16-bit mask took 1.5 GB), and a latent that turns NaN or infinite at any sampling
 * step stops the run naming the step, instead of decoding to an all-black image.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { ExitCode } from '../src/errors.js';
import { denoise, type Predictor } from '../src/pipeline/sampling.js';
import { step1x, tempPhoto, TINY_MODEL } from './util/cli-run.js';

test('CLI: a 3000×3000 mask for a 64×48 photo is refused from its header before any model work (exit 3)', async () => {
  const { photo } = tempPhoto('step1x-mask-');
  const mask = join(mkdtempSync(join(tmpdir(), 'step1x-maskb-')), 'big.png');
  await sharp({ create: { width: 3000, height: 3000, channels: 3, background: '#fff' } }).png({ compressionLevel: 1 }).toFile(mask);
  const r = step1x(['edit', photo, 'x', '--mask', mask, '--model', TINY_MODEL, '-o', join(tmpdir(), 'never.png'), '--quiet']);
  expect(r.code).toBe(ExitCode.INPUT);
  expect(r.stderr).toMatch(/big\.png.*3000x3000 = 9\.0 megapixels, over the limit of 4\.0 megapixels/);
  const fifo = join(mkdtempSync(join(tmpdir(), 'step1x-maskf-')), 'mask.png');
  execFileSync('mkfifo', [fifo]);
  const f = step1x(['edit', photo, 'x', '--mask', fifo, '--model', TINY_MODEL, '-o', join(tmpdir(), 'never.png'), '--quiet']);
  expect(f.code).toBe(ExitCode.INPUT);
  expect(f.stderr).toMatch(/--mask .*mask\.png: is a FIFO/);
});

test('a latent that becomes NaN at step 2 stops sampling with the step named (exit 8)', async () => {
  const C = 4, N = 3, rowLen = 2 * N * C;
  let calls = 0;
  const model: Predictor = {
    predict: async (img, batch) => {
      calls++;
      const out = new Float32Array(batch * rowLen).fill(0.1);
      if (calls === 2) out[1] = NaN;
      return out;
    },
  };
  const img = new Float32Array(rowLen).fill(0.5);
  await expect(denoise(model, img, 1, { timesteps: [1, 0.75, 0.5, 0.25, 0], cfgGuidance: 1, channels: C })).rejects.toMatchObject({
    code: ExitCode.GPU,
    message: expect.stringMatching(/latent became non-finite at step 2 of 4 \(1 of 12 values/),
  });
  expect(calls).toBe(2);
});

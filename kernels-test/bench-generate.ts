/**
 * `npm run bench`, text generation rows: Qwen2.5-VL prefill and decode tokens/s on the tiny test Qwen of
 * test/golden/qwen_vl_tiny (2 layers, D 64, untied lm_head, V 1024) with its 277-token image prompt: one
 * prefill, then 64 greedy decode steps (M = 1 through every layer, KV cache), best of two runs. These are
 * host-overhead numbers on lavapipe (the tiny model is dispatch-bound); the real-size decode is weight-
 * streaming bound (bytes per token in README "Reasoning edit").
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Gpu } from '../src/runtime/gpu.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { QwenVL } from '../src/models/qwen25vl/model.js';
import { QwenGenerator } from '../src/models/qwen25vl/generate.js';
import type { GridThw } from '../src/models/qwen25vl/positions.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export async function benchGenerate(g: Gpu): Promise<void> {
  const dir = join(ROOT, 'test/golden/qwen_vl_tiny');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    console.log(`generation: skipped (${dir} not present)`);
    return;
  }
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const inputIds = await io.readI32('in.input_ids');
  const pixelValues = await io.readF32('in.pixel_values');
  const gt = await io.readI32('in.image_grid_thw');
  await io.close();
  const gridThw: GridThw[] = [[gt[0], gt[1], gt[2]]];
  const model = await QwenVL.load(g, dir, { weights: join(dir, 'model.safetensors') });
  const gen = await QwenGenerator.create(g, model);
  try {
    const N = 64;
    let best = { prefill: Infinity, decode: Infinity };
    for (let r = 0; r < 2; r++) {
      const res = await gen.generate({ inputIds, pixelValues, gridThw }, {
        maxNewTokens: N, eosTokenIds: [], choose: (l) => { let b = 0; for (let i = 1; i < l.length; i++) if (l[i] > l[b]) b = i; return b; },
      });
      best = { prefill: Math.min(best.prefill, res.prefillMs), decode: Math.min(best.decode, res.decodeMs / (N - 1)) };
    }
    const L = inputIds.length;
    console.log(`generation (tiny Qwen, ${L}-token image prompt incl. vision tower): prefill ${best.prefill.toFixed(0)} ms = ` +
      `${(L / best.prefill * 1000).toFixed(0)} tokens/s; decode ${best.decode.toFixed(1)} ms/token = ${(1000 / best.decode).toFixed(1)} tokens/s`);
  } finally {
    gen.dispose();
    await model.dispose();
  }
}

/**
 * v1.2's Qwen2.5-VL embedding pieces against v12_e2e_tiny, with the vision features given (mid.vision_out:
 * the fast image processor's resize is not implemented yet): M-RoPE positions from `ids > 0` with the LLM
 * run WITHOUT an attention mask (QwenInput.ropeMask), last hidden state and the kept prompt embeddings,
 * text embeddings with image rows replaced, and the DiT text ids (pipeline/v12-ids.ts), at the case's
 * tolerances (ids exact, f32 atol 1e-4 / rtol 2e-4, txt_ids atol 1e-4).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { QwenVL } from '../src/models/qwen25vl/model.js';
import { QwenTokenizer } from '../src/models/qwen25vl/tokenizer.js';
import { gatherEmbeddingRows } from '../src/models/qwen25vl/loader.js';
import { buildV12InputIds } from '../src/models/qwen25vl/prompt-v12.js';
import { v12TextIds } from '../src/pipeline/v12-ids.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo } from './util/golden-io.js';

afterAll(releaseGpu);
const caseDir = goldenCase('v12_e2e_tiny');
const spec = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
const io = goldenIo();

function worst(a: ArrayLike<number>, b: ArrayLike<number>, atol: number, rtol: number): number {
  if (a.length !== b.length) return Infinity;
  let w = 0;
  for (let i = 0; i < b.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]) / (atol + rtol * Math.abs(b[i])));
  return w;
}

test('cond and uncond: positions, last hidden, prompt/text embeddings, txt_ids', async () => {
  const g = await getGpu();
  const f = await io('v12_e2e_tiny');
  const tok = QwenTokenizer.load(join(caseDir, 'model', 'processor'));
  const qwen = await QwenVL.load(g, join(caseDir, 'model', 'text_encoder'));
  const report: string[] = [];
  try {
    const grid = Array.from(await f.readI32('mid.image_grid_thw')) as [number, number, number];
    const visionOut = await f.readF32('mid.vision_out');
    const D = qwen.cfg.text.hiddenSize;
    for (const side of ['cond', 'uncond']) {
      const p = buildV12InputIds(tok, side === 'cond' ? spec.spec.prompt : '', visionOut.length / D);
      let pos: Int32Array | undefined, delta = 0;
      const [h] = await qwen.forward(g, [{ inputIds: p.inputIds, pixelValues: null, gridThw: [grid], imageEmbeds: visionOut, ropeMask: Int32Array.from(p.inputIds, (v) => (v > 0 ? 1 : 0)) }], {
        positions: async (ids, d) => void ((pos = ids), (delta = d)),
      });
      const last = await g.readF32(h);
      h.dispose();
      const L = p.inputIds.length;
      const exact = async (name: string, got: ArrayLike<number>) => {
        const want = await f.readI32(name);
        if (Array.from(got).join() !== Array.from(want).join()) report.push(`${name} differs`);
      };
      await exact(`mid.position_ids.${side}`, pos!);
      await exact(`mid.rope_deltas.${side}`, [delta]);
      const check = async (name: string, got: Float32Array, atol = 1e-4, rtol = 2e-4) => {
        const w = worst(got, await f.readF32(name), atol, rtol);
        if (!(w <= 1)) report.push(`${name}: worst ${w.toFixed(3)} of the tolerance`);
      };
      await check(`mid.last_hidden.${side}`, last);
      await check(`mid.prompt_embeds.${side}`, last.subarray(p.keepStart * D, (p.keepStart + p.keepLen) * D));
      const kept = p.inputIds.subarray(p.keepStart, p.keepStart + p.keepLen);
      const visionMask = Int32Array.from(kept, (id) => (id === qwen.cfg.imageTokenId ? 1 : 0));
      await exact(`mid.vision_mask.${side}`, visionMask);
      const textEmbeds = await gatherEmbeddingRows(qwen.ckpt, kept);
      let v = 0;
      for (let k = 0; k < kept.length; k++) if (visionMask[k]) textEmbeds.set(visionOut.subarray(v * D, ++v * D), k * D);
      await check(`mid.text_embeds.${side}`, textEmbeds);
      const ids = v12TextIds(pos!, L, p.keepStart, p.keepLen, visionMask, spec.spec.resized_wh, [grid[2] * 14, grid[1] * 14]);
      await check(`mid.pos_kept_shifted.${side}`, ids.posKeptShifted, 1e-6, 0);
      await check(`mid.txt_ids.${side}`, ids.txtIds, 1e-4, 1e-6);
    }
  } finally {
    await qwen.dispose();
  }
  expect(report).toEqual([]);
});

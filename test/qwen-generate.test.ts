/**
 * Qwen2.5-VL generation with the KV cache equals the full recompute: on the tiny Qwen of qwen_vl_tiny (untied
 * lm_head, a prompt with an image) and of tiny_e2e_v11 (tied embeddings, text-only prompt), 32 greedy tokens are
 * decoded with the cache (prefill + M = 1 steps); then the whole sequence (prompt + the 31 fed tokens) runs
 * through the ordinary full forward and its logits at the last 32 positions must equal the cached steps'
 * logits (atol 2e-4 of the largest |logit|; 2e-2 at mixed precision, where prefill (M = L) and decode (M = 1)
 * GEMMs may take different kernels), and the argmax of every step agrees wherever the top-2 gap exceeds that.
 * Under the subgroup-matrix environment (`STEP1X_KERNELS=subgroup-matrix scripts/sgmat-env.sh run …`) the same
 * test runs the sgmat kernels.
 */
import { join } from 'node:path';
import { getGpu, releaseGpu, compare } from '../kernels-test/harness.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { QwenVL, type QwenInput } from '../src/models/qwen25vl/model.js';
import { QwenGenerator } from '../src/models/qwen25vl/generate.js';
import { thinkerChooser } from '../src/pipeline/reason/sampling.js';
import type { GridThw } from '../src/models/qwen25vl/positions.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

const N = 32;

async function cachedVsFull(dir: string, input: QwenInput, weights?: string): Promise<void> {
  const g = await getGpu();
  const model = await QwenVL.load(g, dir, { weights });
  const gen = await QwenGenerator.create(g, model);
  try {
    const steps: Float32Array[] = [];
    const t0 = performance.now();
    const r = await gen.generate(input, {
      maxNewTokens: N, eosTokenIds: [], choose: thinkerChooser(true), onStep: (_s, _t, logits) => void steps.push(logits.slice()),
    });
    process.stderr.write(`  generate: prefill ${r.prefillMs.toFixed(0)} ms, ${N} tokens ${r.decodeMs.toFixed(0)} ms (total ${(performance.now() - t0).toFixed(0)} ms)\n`);
    expect(r.ids.length).toBe(N);
    expect(steps.length).toBe(N);
    // full recompute: prompt + the first N-1 generated tokens; logits at positions L-1 … L+N-2
    const L = input.inputIds.length;
    const ids = Int32Array.from([...input.inputIds, ...r.ids.slice(0, N - 1)]);
    const [h] = await model.forward(g, [{ ...input, inputIds: ids, attentionMask: new Int32Array(ids.length).fill(1) }]);
    try {
      const D = model.cfg.text.hiddenSize;
      let worst = 0;
      for (let s = 0; s < N; s++) {
        const rows = h.reshape([L + N - 1, D]).rows(0, L + s);
        const full = await gen.logitsOfLastRow(rows);
        rows.dispose();
        let range = 0;
        for (const v of full) range = Math.max(range, Math.abs(v));
        const tol = (g.precision === 'mixed' ? 2e-2 : 2e-4) * range;
        const c = compare(`step ${s}`, steps[s], full, tol, 0);
        worst = Math.max(worst, c.maxAbs / range);
        if (!c.pass) throw new Error(`step ${s}: cached logits differ from the full recompute: ${c.msg}`);
        let a = 0, b = 0;
        for (let v = 1; v < full.length; v++) {
          if (full[v] > full[a]) a = v;
          if (steps[s][v] > steps[s][b]) b = v;
        }
        let second = -Infinity;
        for (let v = 0; v < full.length; v++) if (v !== a && full[v] > second) second = full[v];
        if (full[a] - second > 2 * tol) expect(b).toBe(a);
      }
      process.stderr.write(`  ${dir.split('/').slice(-2).join('/')}: ${N} cached steps vs full recompute, max |Δlogit| / max|logit| = ${worst.toExponential(2)} (prompt ${L}, ${g.kernels} kernels, ${g.precision})\n`);
    } finally {
      h.dispose();
    }
  } finally {
    gen.dispose();
    await model.dispose();
  }
}

test('qwen_vl_tiny (untied lm_head, image prompt): KV-cache decoding = full forward for 32 tokens', async () => {
  const dir = goldenCase('qwen_vl_tiny');
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  try {
    const gt = await io.readI32('in.image_grid_thw');
    const grids: GridThw[] = [];
    for (let i = 0; i < gt.length; i += 3) grids.push([gt[i], gt[i + 1], gt[i + 2]]);
    await cachedVsFull(dir, { inputIds: await io.readI32('in.input_ids'), pixelValues: await io.readF32('in.pixel_values'), gridThw: grids },
      join(dir, 'model.safetensors'));
  } finally {
    await io.close();
  }
}, 400_000);

test('tiny_e2e_v11 Qwen (tied embeddings, text prompt): KV-cache decoding = full forward for 32 tokens', async () => {
  const dir = join(goldenCase('tiny_e2e_v11'), 'model/Qwen2.5-VL-7B-Instruct');
  const ids = Int32Array.from([151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 9707, 0, 151645, 198, 151644, 77091, 198]);
  await cachedVsFull(dir, { inputIds: ids, pixelValues: null, gridThw: [] });
}, 400_000);

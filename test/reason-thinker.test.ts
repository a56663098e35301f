/**
 * v12_thinker_greedy_tiny golden through the runner: the thinker's think() and score2 calls on the tiny v1.2
 * text encoder (our prompts → chat template → fetch_image + Qwen2VLImageProcessorFast → KV-cache greedy
 * generation): chat texts, prompt ids, fetched images, pixel rows, both calls' 128 generated ids, top-2 ids and
 * gaps, think()'s returned text and the score2 parse failure, every tensor at the case's tolerance.
 *
 * One diagnostic tensor may differ by rank swaps: `mid.*.raw_logits_top5_ids` ranks whose reference logits are
 * within 4 f32 ulps of each other (score2 step 91: 18.371675 vs 18.371674, 1 ulp) — an order a different
 * summation order cannot promise. Every other difference fails.
 */
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

const ulp = (x: number) => {
  const f = new Float32Array([Math.abs(x)]);
  const u = new Uint32Array(f.buffer);
  u[0]++;
  return f[0] - Math.abs(x);
};

test('v12_thinker_greedy_tiny: every tensor at tolerance (both calls: 128 greedy ids exact)', async () => {
  const dir = goldenCase('v12_thinker_greedy_tiny');
  const res = await runGolden(dir, { gpu: await getGpu(), log: (m) => process.stderr.write(`  ${m}\n`) });
  const failed = res.details.filter((d) => !d.pass);
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const unexplained: string[] = [];
  try {
    for (const d of failed) {
      if (!/^mid\.\w+\.raw_logits_top5_ids$/.test(d.name)) {
        unexplained.push(`${d.name}: ${d.note}`);
        continue;
      }
      const ref = await io.readI32(d.name), refV = await io.readF32(d.name.replace('_ids', ''));
      const got = res.emitted.get(d.name)!.data;
      for (let i = 0; i < ref.length; i++) {
        if (got[i] === ref[i]) continue;
        const row = Math.floor(i / 5) * 5;
        const j = [i - 1, i + 1].find((k) => k >= row && k < row + 5 && got[k] === ref[i] && got[i] === ref[k]);
        if (j === undefined || Math.abs(refV[i] - refV[j]) > 4 * ulp(refV[i])) unexplained.push(`${d.name}[${i}]: got ${got[i]}, ref ${ref[i]}`);
      }
    }
  } finally {
    await io.close();
  }
  if (unexplained.length) throw new Error(unexplained.join('\n'));
  const ids = res.details.filter((d) => /^out\.\w+\.generated_ids$/.test(d.name));
  expect(ids.map((d) => d.pass)).toEqual([true, true]);
  expect(res.details.length).toBe(24);
}, 600_000);

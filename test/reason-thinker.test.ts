/**
 * v12_thinker_greedy_tiny golden through the runner: the thinker's think() and score2 calls on the tiny v1.2
 * text encoder (our prompts → chat template → fetch_image + Qwen2VLImageProcessorFast → KV-cache greedy
 * generation): chat texts, prompt ids, fetched images, pixel rows, both calls' 128 generated ids, top-2 ids and
 * gaps, think()'s returned text and the score2 parse failure, every tensor at the case's tolerance.
 *
 * One diagnostic tensor may differ by rank swaps: `mid.*.raw_logits_top5_ids` ranks whose reference logits lie
 * within the logits' tolerance (score2 step 91: 18.371675 vs 18.371674, 1 ulp) — the runner accepts exactly those
 * (compare.ts explainRankSwaps, tested in golden-runner.test.ts). Every other difference fails.
 */
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

test('v12_thinker_greedy_tiny: every tensor at tolerance (both calls: 128 greedy ids exact)', async () => {
  const dir = goldenCase('v12_thinker_greedy_tiny');
  const res = await runGolden(dir, { gpu: await getGpu(), log: (m) => process.stderr.write(`  ${m}\n`) });
  const failed = res.details.filter((d) => !d.pass).map((d) => `${d.name}: ${d.note}`);
  if (failed.length) throw new Error(failed.join('\n'));
  const ids = res.details.filter((d) => /^out\.\w+\.generated_ids$/.test(d.name));
  expect(ids.map((d) => d.pass)).toEqual([true, true]);
  expect(res.details.length).toBe(24);
}, 600_000);

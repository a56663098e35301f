/**
 * Golden kind `v12_sampling` (case v12_sampling_tiny): the thinker's logits-processor chain on fixed rows.
 * For each `in.row<i>.logits` [V] / `in.row<i>.history_ids` [H] it emits, for the chains of
 * `processor_chains` (`sample`: penalty → temperature → top-k → top-p; `greedy`: penalty only):
 *   out.<chain>.row<i>.kept_mask [V] (i64, 1 where the processed score is finite)
 *   out.<chain>.row<i>.scores_kept [V] (f32, 0 where removed)
 *   out.<chain>.row<i>.probs [V] (f32 softmax; greedy: one-hot of the first argmax)
 * The chain's parameters are read from case.json `processor_chains`, so a changed contract fails loudly.
 */
import { ExitCode, fail } from '../../errors.js';
import type { GoldenContext } from '../registry.js';
import { argmax, processScores, softmaxF32, THINKER_SAMPLING, type SamplingParams } from '../../pipeline/reason/sampling.js';

/** The processor list of case.json → our parameters (any class or value we do not implement fails). */
export function chainParams(chain: any[], where: string): { params: SamplingParams; greedy: boolean } {
  const p: SamplingParams = { repetitionPenalty: 1, temperature: 1, topK: 0, topP: 1 };
  for (const c of chain ?? []) {
    if (c.class === 'RepetitionPenaltyLogitsProcessor') p.repetitionPenalty = c.penalty;
    else if (c.class === 'TemperatureLogitsWarper') p.temperature = c.temperature;
    else if (c.class === 'TopKLogitsWarper') p.topK = c.top_k;
    else if (c.class === 'TopPLogitsWarper') {
      if ((c.min_tokens_to_keep ?? 1) !== 1) fail(`${where}: TopPLogitsWarper min_tokens_to_keep ${c.min_tokens_to_keep} is not supported`, ExitCode.USAGE);
      p.topP = c.top_p;
    } else fail(`${where}: logits processor ${JSON.stringify(c.class)} is not implemented`, ExitCode.USAGE);
  }
  const greedy = p.temperature === 1 && p.topK === 0 && p.topP === 1;
  return { params: p, greedy };
}

export async function run(ctx: GoldenContext): Promise<void> {
  const chains = ctx.caseJson.processor_chains;
  if (!chains || typeof chains !== 'object') fail(`${ctx.caseDir}: case.json has no processor_chains`, ExitCode.USAGE);
  const s = chainParams(chains.sample, `${ctx.caseDir} processor_chains.sample`);
  if (JSON.stringify(s.params) !== JSON.stringify(THINKER_SAMPLING))
    ctx.log(`note: the case's sample chain ${JSON.stringify(s.params)} differs from the thinker's ${JSON.stringify(THINKER_SAMPLING)}`);
  let rows = 0;
  for (let i = 0; ctx.has(`in.row${i}.logits`); i++, rows++) {
    const logits = await ctx.input(`in.row${i}.logits`);
    const history = await ctx.inputInt(`in.row${i}.history_ids`);
    for (const name of Object.keys(chains)) {
      const { params, greedy } = chainParams(chains[name], `${ctx.caseDir} processor_chains.${name}`);
      const scores = processScores(logits, history, params, greedy);
      const V = scores.length;
      const kept = new Int32Array(V), scoresKept = new Float32Array(V);
      for (let v = 0; v < V; v++) if (Number.isFinite(scores[v])) {
        kept[v] = 1;
        scoresKept[v] = scores[v];
      }
      let probs: Float32Array;
      if (greedy) {
        probs = new Float32Array(V);
        probs[argmax(scores)] = 1;
      } else probs = softmaxF32(scores);
      ctx.emit(`out.${name}.row${i}.kept_mask`, kept, [V], 'i64');
      ctx.emit(`out.${name}.row${i}.scores_kept`, scoresKept, [V]);
      ctx.emit(`out.${name}.row${i}.probs`, probs, [V]);
    }
  }
  if (!rows) fail(`${ctx.caseDir}: io.safetensors has no in.row0.logits`, ExitCode.USAGE);
  ctx.log(`${rows} rows × ${Object.keys(chains).length} chains`);
}

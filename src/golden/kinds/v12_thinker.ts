/**
 * Golden kind `v12_thinker` (case v12_thinker_greedy_tiny): the thinker's calls on the tiny v1.2 text encoder
 * of `spec.model_from` (a v12_e2e case beside this one, with that case's `spec.shared_files` applied), greedy. For each `calls[i]`
 * (kinds reformat → think(), score2) the messages are built from `spec.prompt` and `in.photo_u8` by our prompt
 * code, the chat text is checked against `calls[i].chat_text`, and it emits
 *   mid.<call>.input_ids / attention_mask / image_grid_thw / fetched_u8 / pixel_values_rows (the rows of
 *   in.<call>.pixel_values_row_index) / pixel_values_sum, out.<call>.generated_ids (128 greedy tokens),
 *   out.<call>.top2_ids / top2_scores / top2_gap (processed scores), mid.<call>.raw_logits_top5(_ids);
 * then checks think_returned and what validate_score1_response makes of the score2 reply (score2_result).
 */
import { ExitCode, Step1xError } from '../../errors.js';
import type { GoldenContext } from '../registry.js';
import { readDiffusersDir } from '../../io/diffusers-layout.js';
import { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import { QwenVL } from '../../models/qwen25vl/model.js';
import { QwenGenerator } from '../../models/qwen25vl/generate.js';
import { PROMPTS, type PromptKind } from '../../pipeline/reason/prompts.js';
import { analyzeText, validateScoreResponse } from '../../pipeline/reason/parsers.js';
import { callThinker } from '../../pipeline/reason/thinker.js';
import { modelFrom, photoOf } from './v12_e2e.js';

function topK(x: Float32Array, k: number): number[] {
  const idx: number[] = [];
  for (let n = 0; n < k; n++) {
    let b = -1;
    for (let v = 0; v < x.length; v++) if (!idx.includes(v) && (b < 0 || x[v] > x[b])) b = v;
    idx.push(b);
  }
  return idx;
}

export async function run(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec, cj = ctx.caseJson;
  // the shared layout stores the text encoder and tokenizer once (in tiny_e2e / tiny_e2e_v11): modelFrom
  // links them into a temporary copy of the v12_e2e case's model directory, sha256 checked
  const model = modelFrom(ctx);
  const problems: string[] = [];
  let qwen: QwenVL | undefined, gen: QwenGenerator | undefined;
  try {
    const d = readDiffusersDir(model.dir);
    const tok = QwenTokenizer.load(d.tokenizerDir);
    const photo = await photoOf(ctx);
    qwen = await QwenVL.load(ctx.gpu, d.textEncoderDir);
    gen = await QwenGenerator.create(ctx.gpu, qwen);
    for (const call of cj.calls as any[]) {
      const kind = call.messages.kind as PromptKind;
      const name = call.call as string;
      const m = PROMPTS[kind]({ instruction: spec.prompt, language: analyzeText(spec.prompt), source: photo, target: photo, description: '', priorScore: '', priorReason: '' });
      if (m.system !== call.messages.system) problems.push(`${name}: system prompt differs`);
      const steps: { tok: number; processed: Float32Array; raw: Float32Array }[] = [];
      const r = await callThinker(gen, tok, m, { greedy: true, onStep: (_s, t, processed, raw) => void steps.push({ tok: t, processed: processed.slice(), raw: raw.slice() }) });
      if (r.prepared.chatText !== call.chat_text) problems.push(`${name}: chat text differs from calls[].chat_text`);
      const ids = r.prepared.inputIds, L = ids.length, im = r.prepared.images[0];
      ctx.emit(`mid.${name}.input_ids`, ids, [L], 'i64');
      ctx.emit(`mid.${name}.attention_mask`, new Int32Array(L).fill(1), [L], 'i64');
      ctx.emit(`mid.${name}.image_grid_thw`, Int32Array.from(im.gridThw), [1, 3], 'i64');
      ctx.emit(`mid.${name}.fetched_u8`, im.fetched.data, [im.fetched.height, im.fetched.width, 3], 'u8');
      const rowIdx = await ctx.inputInt(`in.${name}.pixel_values_row_index`);
      const rows = new Float32Array(rowIdx.length * 1176);
      rowIdx.forEach((ri, k) => rows.set(im.pixelValues.subarray(ri * 1176, (ri + 1) * 1176), k * 1176));
      ctx.emit(`mid.${name}.pixel_values_rows`, rows, [rowIdx.length, 1176]);
      let sum = 0;
      for (const v of im.pixelValues) sum += v;
      ctx.emit(`mid.${name}.pixel_values_sum`, Float32Array.of(sum), [1]);
      const G = steps.length;
      ctx.emit(`out.${name}.generated_ids`, r.generation.ids, [G], 'i64');
      const t2 = new Int32Array(G * 2), s2 = new Float32Array(G * 2), gap = new Float32Array(G);
      const t5 = new Int32Array(G * 5), r5 = new Float32Array(G * 5);
      steps.forEach((s, k) => {
        const [a, b] = topK(s.processed, 2);
        t2.set([a, b], 2 * k);
        s2.set([s.processed[a], s.processed[b]], 2 * k);
        gap[k] = s.processed[a] - s.processed[b];
        const top = topK(s.raw, 5);
        t5.set(top, 5 * k);
        r5.set(top.map((v) => s.raw[v]), 5 * k);
      });
      ctx.emit(`out.${name}.top2_ids`, t2, [G, 2], 'i64');
      ctx.emit(`out.${name}.top2_scores`, s2, [G, 2]);
      ctx.emit(`out.${name}.top2_gap`, gap, [G]);
      ctx.emit(`mid.${name}.raw_logits_top5_ids`, t5, [G, 5], 'i64');
      ctx.emit(`mid.${name}.raw_logits_top5`, r5, [G, 5]);
      ctx.log(`${name}: ${L} prompt ids, ${G} tokens (${r.generation.stoppedBy}), prefill ${r.generation.prefillMs.toFixed(0)} ms, decode ${(r.generation.decodeMs / Math.max(1, G - 1)).toFixed(0)} ms/token`);
      if (kind === 'reformat' && r.text !== cj.think_returned) problems.push(`think(): returned ${JSON.stringify(r.text.slice(0, 80))}…, want ${JSON.stringify(String(cj.think_returned).slice(0, 80))}…`);
      if (kind === 'score2') {
        const [ok] = validateScoreResponse(r.text);
        const want = cj.score2_result;
        if (want?.raises ? ok : !ok) problems.push(`score2: validate_score1_response gives ok=${ok}, the case ${want?.raises ? `raises ${want.raises}` : 'returns'}`);
      }
    }
  } finally {
    gen?.dispose();
    await qwen?.dispose();
    model.cleanup();
  }
  if (problems.length) throw new Step1xError(`v12_thinker: ${problems.join('; ')}`, ExitCode.MISMATCH);
}

/**
 * v12_loop_scripted golden, control flow: the v1.2 reasoning loop driven by the scripted MLLM replies of each
 * scenario, with images as identities ('original', 'round<k>_output'). Every call of the transcript (kind,
 * system prompt, user content with text and image identities, max_tokens argument) and the result (per round:
 * edit prompt, which image it edits, its output; reformat prompt, think_info, best_info, selection scores,
 * has_success, final image) must equal the recorded ones exactly — retries and fallbacks included.
 * The per-round pixels (out.<s>.round<r>.rgb_u8) need the v1.2 edit pipeline and are not checked here.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { ReasonLoop, FAILED_REFLECTION } from '../src/pipeline/reason/loop.js';
import type { ThinkerMessages } from '../src/pipeline/reason/prompts.js';

const caseJson = JSON.parse(readFileSync(join(goldenCase('v12_loop_scripted'), 'case.json'), 'utf8'));

async function runScenario(spec: any) {
  const script = [...spec.script];
  const transcript: any[] = [];
  const edits: string[] = [];
  const loop = new ReasonLoop<string>({
    async callModel(m: ThinkerMessages<string>, maxTokens: number) {
      const next = script.shift();
      if (!next) throw new Error(`call ${transcript.length} (${m.kind}) beyond the script`);
      if (next.kind !== m.kind) throw new Error(`call ${transcript.length}: the loop asks ${m.kind}, the script expects ${next.kind}`);
      transcript.push({ kind: m.kind, system: m.system, user_content: m.user, max_tokens_arg: maxTokens, scripted_response: next.response });
      return next.response;
    },
    async edit(_prompt, _image, round) {
      edits.push(_prompt);
      return `round${round}_output`;
    },
  });
  const r = await loop.run('original', { prompt: spec.prompt, thinking: spec.thinking, maxRounds: spec.max_try_cnt });
  expect(script).toEqual([]);
  const result = {
    rounds: r.rounds.map((x) => ({ round: x.round, edit_prompt: x.editPrompt, negative_prompt: '', edits_image: x.editsImage, output: x.output })),
    num_output_images: r.rounds.length,
    final_image: r.finalImage,
    reformat_prompt: r.reformatPrompt,
    think_info: r.thinkInfo,
    best_info: r.bestInfo,
    selection_scores: r.selectionScores,
    has_success: r.hasSuccess,
  };
  return { transcript, result };
}

describe('v12_loop_scripted: transcript and result of every scenario', () => {
  for (const [i, sc] of (caseJson.scenarios as any[]).entries()) {
    const spec = caseJson.spec.scenarios[i];
    test(`scenario ${sc.name}: ${sc.transcript.length} calls, ${sc.result.rounds.length} rounds`, async () => {
      expect(spec.name).toBe(sc.name);
      const { transcript, result } = await runScenario(spec);
      expect(transcript.length).toBe(sc.transcript.length);
      transcript.forEach((t, k) => expect({ call: k, ...t }).toEqual({ call: k, ...sc.transcript[k] }));
      expect(result).toEqual(sc.result);
    });
  }
});

test('a parser exhausted 20 times falls back to the fixed <#Failed> reflection and [0, 0] scores', async () => {
  let calls = 0;
  const loop = new ReasonLoop<string>({
    async callModel(m) {
      calls++;
      return m.kind === 'description' ? 'a description' : 'not json, no tags';
    },
    async edit(_p, _i, r) {
      return `round${r}_output`;
    },
  });
  const r = await loop.run('original', { prompt: 'make it snow', thinking: false, maxRounds: 2 });
  // per round: 1 description + 20 scoring (fails → no reflection call) + 20 score1 + 20 score2
  expect(calls).toBe(2 * 61);
  expect(r.thinkInfo).toEqual([FAILED_REFLECTION, FAILED_REFLECTION]);
  expect(r.rounds.map((x) => x.editsImage)).toEqual(['original', 'original']);
  expect(r.selectionScores).toEqual([0, 0]);
  expect(r.finalImage).toBe('round1_output'); // tie without success → the later round
});

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
import { runScriptedScenario } from '../src/golden/kinds/v12_loop.js';

const caseJson = JSON.parse(readFileSync(join(goldenCase('v12_loop_scripted'), 'case.json'), 'utf8'));

describe('v12_loop_scripted: transcript and result of every scenario', () => {
  for (const [i, sc] of (caseJson.scenarios as any[]).entries()) {
    const spec = caseJson.spec.scenarios[i];
    test(`scenario ${sc.name}: ${sc.transcript.length} calls, ${sc.result.rounds.length} rounds`, async () => {
      expect(spec.name).toBe(sc.name);
      const { transcript, result } = await runScriptedScenario(spec);
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

/**
 * v12_loop_scripted golden, control flow: the v1.2 reasoning loop driven by the scripted MLLM replies of each
 * scenario, with images as identities ('original', 'round<k>_output'). Every call of the transcript (kind,
 * system prompt, user content with text and image identities, max_tokens argument) and the result (per round:
 * edit prompt, which image it edits, its output; reformat prompt, think_info, best_info, selection scores,
 * has_success, final image) must equal the recorded ones exactly — retries and fallbacks included.
 * The per-round pixels: `step1x golden` on the case runs the real v1.2 edit of v12_e2e_tiny behind the loop's
 * edit hook (each round from the photo or our own earlier output) and every tensor must pass, none skipped.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { formatDetail } from '../src/golden/compare.js';
import { goldenCase } from './util/golden-path.js';
import { ReasonLoop, FAILED_REFLECTION } from '../src/pipeline/reason/loop.js';
import { runScriptedScenario } from '../src/golden/kinds/v12_loop.js';

afterAll(releaseGpu);
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

test('v12_loop_scripted: every round image and final image of the real v1.2 edit passes, none skipped', async () => {
  const g = await getGpu();
  const r = await runGolden(goldenCase('v12_loop_scripted'), { gpu: g, log: () => undefined });
  const bad = r.details.filter((d) => !d.pass || d.skipped).map(formatDetail);
  expect(bad).toEqual([]);
  const names = r.report.tensors.map((t) => t.name).sort();
  expect(names).toEqual(['A.round0', 'A.round1', 'A.round2', 'B.round0'].flatMap((x) => {
    const [s, rd] = x.split('.');
    return [`mid.${s}.${rd}.edit_input_u8`, `out.${s}.${rd}.rgb_u8`];
  }).concat(['out.A.final_u8', 'out.B.final_u8']).sort());
  expect(r.report.pass).toBe(true);
});

/**
 * Golden kind `v12_loop` (case v12_loop_scripted): the v1.2 reasoning loop driven by each scenario's scripted
 * MLLM replies (`spec.scenarios[s].script`), with images as identities ('original', 'round<k>_output'). Checks
 * every call of `scenarios[s].transcript` (kind, system prompt, user content, max_tokens) and the whole
 * `scenarios[s].result` exactly, and fails naming the first difference.
 *
 * The per-round images (`out.<s>.round<r>.rgb_u8`, `out.<s>.final_u8`) need the v1.2 edit pipeline behind
 * the loop's `edit` hook; this kind does not compute them, so the runner reports them as not computed.
 */
import { ExitCode, Step1xError } from '../../errors.js';
import type { GoldenContext } from '../registry.js';
import { ReasonLoop } from '../../pipeline/reason/loop.js';
import type { ThinkerMessages } from '../../pipeline/reason/prompts.js';
import { jsonEqual } from './v12_parsers.js';

export interface ScriptedRun {
  transcript: Record<string, unknown>[];
  result: Record<string, unknown>;
}

/** One scenario with its script: the transcript and the result in the case's JSON form. */
export async function runScriptedScenario(spec: any): Promise<ScriptedRun> {
  const script = [...spec.script];
  const transcript: Record<string, unknown>[] = [];
  const loop = new ReasonLoop<string>({
    async callModel(m: ThinkerMessages<string>, maxTokens: number) {
      const next = script.shift();
      if (!next) throw new Step1xError(`scenario ${spec.name}: call ${transcript.length} (${m.kind}) beyond the script`, ExitCode.MISMATCH);
      if (next.kind !== m.kind) throw new Step1xError(`scenario ${spec.name}: call ${transcript.length} is ${m.kind}, the script expects ${next.kind}`, ExitCode.MISMATCH);
      transcript.push({ kind: m.kind, system: m.system, user_content: m.user, max_tokens_arg: maxTokens, scripted_response: next.response });
      return next.response;
    },
    edit: async (_prompt, _image, round) => `round${round}_output`,
  });
  const r = await loop.run('original', { prompt: spec.prompt, thinking: spec.thinking, maxRounds: spec.max_try_cnt });
  if (script.length) throw new Step1xError(`scenario ${spec.name}: ${script.length} scripted replies left unused`, ExitCode.MISMATCH);
  return {
    transcript,
    result: {
      rounds: r.rounds.map((x) => ({ round: x.round, edit_prompt: x.editPrompt, negative_prompt: '', edits_image: x.editsImage, output: x.output })),
      num_output_images: r.rounds.length,
      final_image: r.finalImage,
      reformat_prompt: r.reformatPrompt,
      think_info: r.thinkInfo,
      best_info: r.bestInfo,
      selection_scores: r.selectionScores,
      has_success: r.hasSuccess,
    },
  };
}

export async function run(ctx: GoldenContext): Promise<void> {
  const problems: string[] = [];
  for (const [i, sc] of (ctx.caseJson.scenarios as any[]).entries()) {
    const spec = ctx.spec.scenarios[i];
    const got = await runScriptedScenario(spec);
    const n = Math.max(got.transcript.length, sc.transcript.length);
    for (let k = 0; k < n; k++)
      if (!jsonEqual(got.transcript[k], sc.transcript[k])) {
        problems.push(`scenario ${sc.name}: call ${k} differs (${(got.transcript[k] as any)?.kind} vs ${sc.transcript[k]?.kind})`);
        break;
      }
    for (const key of Object.keys(sc.result))
      if (!jsonEqual(got.result[key], sc.result[key])) problems.push(`scenario ${sc.name}: result.${key} = ${JSON.stringify(got.result[key])}, want ${JSON.stringify(sc.result[key])}`);
    ctx.log(`scenario ${sc.name}: ${got.transcript.length} calls, ${(got.result.rounds as unknown[]).length} rounds, final ${got.result.final_image}`);
  }
  if (problems.length) throw new Step1xError(`v12_loop: ${problems.join('; ')}`, ExitCode.MISMATCH);
  ctx.log('transcripts and results exact; per-round images not computed (they need the v1.2 edit pipeline)');
}

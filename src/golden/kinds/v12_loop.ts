/**
 * Golden kind `v12_loop` (case v12_loop_scripted): the v1.2 reasoning loop driven by each scenario's scripted
 * MLLM replies (`spec.scenarios[s].script`), with images as identities ('original', 'round<k>_output'). Checks
 * every call of `scenarios[s].transcript` (kind, system prompt, user content, max_tokens) and the whole
 * `scenarios[s].result` exactly, and fails naming the first difference.
 *
 * Behind the loop's `edit` hook runs the real v1.2 edit (pipeline/v12-edit.ts) of the model of
 * `spec.model_from`: round r of scenario s edits the image the loop picked (the photo `in.photo_u8` or an
 * earlier round's OWN output, never the case's recorded one) with the round's prompt, the scenario's
 * size_level / num_steps / cfg and the draws `in.<s>.round<r>.noise` / `sample_eps`, and emits
 * `mid.<s>.round<r>.edit_input_u8` [H, W, 3], `out.<s>.round<r>.rgb_u8` [H, W, 3] (photo size) and, after the
 * loop, `out.<s>.final_u8` (the selected round's output).
 */
import { ExitCode, Step1xError, fail } from '../../errors.js';
import type { GoldenContext } from '../registry.js';
import type { RgbImage } from '../../io/resize.js';
import { readDiffusersDir } from '../../io/diffusers-layout.js';
import { ReasonLoop } from '../../pipeline/reason/loop.js';
import type { ThinkerMessages } from '../../pipeline/reason/prompts.js';
import { V12_DEFAULTS, runV12Edit } from '../../pipeline/v12-edit.js';
import { jsonEqual } from './v12_parsers.js';
import { modelFrom, photoOf } from './v12_e2e.js';

export interface ScriptedRun {
  transcript: Record<string, unknown>[];
  result: Record<string, unknown>;
}

/** The pixels behind an edit round: `image` (an identity) edited with `prompt` becomes `output`. */
export type ScriptedEdit = (prompt: string, image: string, round: number, output: string) => Promise<void>;

/** One scenario with its script: the transcript and the result in the case's JSON form. */
export async function runScriptedScenario(spec: any, editPixels?: ScriptedEdit): Promise<ScriptedRun> {
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
    async edit(prompt, image, round) {
      const output = `round${round}_output`;
      await editPixels?.(prompt, image, round, output);
      return output;
    },
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
  const model = modelFrom(ctx);
  try {
    const d = readDiffusersDir(model.dir);
    if (d.version !== 'v1.2') fail(`${model.dir}: a ${d.version} model; the v12_loop kind runs v1.2`, ExitCode.WEIGHTS);
    const photo = await photoOf(ctx);
    const shape = [photo.height, photo.width, 3];
    for (const [i, sc] of (ctx.caseJson.scenarios as any[]).entries()) {
      const spec = ctx.spec.scenarios[i], s = spec.name as string;
      const images = new Map<string, RgbImage>([['original', photo]]);
      const got = await runScriptedScenario(spec, async (prompt, image, r, output) => {
        const src = images.get(image) ?? fail(`v12_loop: scenario ${s} round ${r} edits "${image}", which no earlier round produced`, ExitCode.MISMATCH);
        ctx.emit(`mid.${s}.round${r}.edit_input_u8`, src.data, shape, 'u8');
        const res = await runV12Edit(ctx.gpu, d, src, {
          prompt, sizeLevel: spec.size_level, steps: spec.num_steps, cfg: spec.cfg, processorPixels: V12_DEFAULTS.processorPixels,
          noise: await ctx.input(`in.${s}.round${r}.noise`), refEps: await ctx.input(`in.${s}.round${r}.sample_eps`),
        });
        images.set(output, res.image);
        ctx.emit(`out.${s}.round${r}.rgb_u8`, res.image.data, shape, 'u8');
      });
      const final = images.get(got.result.final_image as string);
      if (final) ctx.emit(`out.${s}.final_u8`, final.data, shape, 'u8');
      const n = Math.max(got.transcript.length, sc.transcript.length);
      for (let k = 0; k < n; k++)
        if (!jsonEqual(got.transcript[k], sc.transcript[k])) {
          problems.push(`scenario ${sc.name}: call ${k} differs (${(got.transcript[k] as any)?.kind} vs ${sc.transcript[k]?.kind})`);
          break;
        }
      for (const key of Object.keys(sc.result))
        if (!jsonEqual(got.result[key], sc.result[key])) problems.push(`scenario ${sc.name}: result.${key} = ${JSON.stringify(got.result[key])}, want ${JSON.stringify(sc.result[key])}`);
      ctx.log(`scenario ${sc.name}: ${got.transcript.length} calls, ${(got.result.rounds as unknown[]).length} rounds (each a real v1.2 edit), final ${got.result.final_image}`);
    }
  } finally {
    model.cleanup();
  }
  if (problems.length) throw new Step1xError(`v12_loop: ${problems.join('; ')}`, ExitCode.MISMATCH);
  ctx.log('transcripts and results exact; per-round images computed by the v1.2 edit');
}

/**
 * `step1x plan [--model DIR] [--size N] [--weights bf16|fp8|q8|q4] [--vram-budget X] [--lora F[:S]] [--think]
 * [--reflect] [--json]`: the VRAM plan of an edit (src/pipeline/plan.ts) from the model files' headers, without a
 * GPU. Per stage: resident bytes, streamed bytes, the streamed working set, activation peak, stage peak; then
 * the total. `--think` / `--reflect` (v1.2) add the thinker's stage ('reason': generation on the embed stage's
 * Qwen, its lm_head, KV cache and prefill), as `edit` with them plans it.
 * `--json` prints one object whose `peak_bytes` is the estimated peak GPU bytes of the whole edit. A budget
 * too small for any plan is refused (exit 6) naming the minimum.
 */
import type { Command } from 'commander';
import { ExitCode, Step1xError } from '../errors.js';
import { DIT_FILE_OF, resolveModelFiles, type ModelFiles } from '../io/model-files.js';
import { planEdit } from '../pipeline/plan.js';
import { dryRunProfile } from '../runtime/dryrun/index.js';
import { parseBytes, requireV12Reasoning } from './edit.js';
import { collect, openWeightChoice } from './weights.js';
import { fmtBytes } from './progress.js';

export function register(program: Command): void {
  program
    .command('plan')
    .description('print the GPU memory plan of an edit (what stays resident, what streams, peaks) without running the model')
    .option('--model <dir>', 'model directory, official or diffusers layout (default: $STEP1X_MODEL, then the Hugging Face cache)')
    .option('--size <n>', 'size level (official size_level; a square input is assumed; default 512, 1024 with a v1.2 model)')
    .option('--weights <format>', 'bf16, fp8, q8 or q4 (default: as stored)')
    .option('--vram-budget <bytes>', 'GPU memory budget, e.g. 16GB')
    .option('--lora <file[:scale]>', 'LoRA applied to the DiT (repeatable)', collect)
    .option('--think', 'v1.2 models: plan the edit with the MLLM rewriting the instruction first (as edit --think)')
    .option('--reflect', 'v1.2 models: plan the edit with the MLLM judging the rounds (as edit --reflect)')
    .option('--json', 'one JSON object on stdout')
    .action(async (o: { model?: string; size?: string; weights?: string; vramBudget?: string; lora?: string[]; think?: boolean; reflect?: boolean; json?: boolean }) => {
      const size = o.size === undefined ? undefined : Number(o.size);
      if (size !== undefined && (!Number.isInteger(size) || size < 16 || size > 4096)) throw new Step1xError(`--size must be an integer in [16, 4096], got "${o.size}"`, ExitCode.USAGE);
      const budget = o.vramBudget ? parseBytes(o.vramBudget) : undefined;
      const files = resolveModelFiles(o.model);
      if (o.think || o.reflect) requireV12Reasoning(files);
      const wc = await openWeightChoice(o, files.dit, (m) => process.stderr.write(`step1x: warning: ${m}\n`));
      try {
        // under STEP1X_DRYRUN the device's memory is known, and the run plans with it when no budget is given
        const reason = o.think || o.reflect ? { reflect: !!o.reflect } : undefined;
        const plan = await planEdit(files, { size, weights: wc.weights, loras: wc.loras, budget, deviceBytes: dryRunProfile()?.memoryBytes, reason });
        const model = modelKind(files);
        if (o.json) {
          process.stdout.write(JSON.stringify({ ...model, ...plan }) + '\n');
          return;
        }
        const lines = [
          `model: Step1X-Edit ${model.version}, ${model.layout} layout (${files.source})`,
          `plan for a ${plan.width}x${plan.height} edit, weights ${plan.weights}, budget ${budget === undefined ? 'none' : fmtBytes(budget)}; models ${plan.keep_resident ? 'loaded once and kept resident' : 'loaded per stage'}`,
          `${'stage'.padEnd(8)} ${'model'.padEnd(6)} ${'resident'.padStart(11)} ${'streamed'.padStart(11)} ${'working'.padStart(11)} ${'activations'.padStart(11)} ${'peak'.padStart(11)}`,
          ...plan.stages.map((s) => `${s.stage.padEnd(8)} ${s.model.padEnd(6)} ${fmtBytes(s.resident_bytes).padStart(11)} ${fmtBytes(s.streamed_bytes).padStart(11)} ${fmtBytes(s.working_bytes).padStart(11)} ${fmtBytes(s.activation_bytes).padStart(11)} ${fmtBytes(s.peak_bytes).padStart(11)}`),
          ...plan.stages.filter((s) => s.streams.length).map((s) => `${s.stage}: streams ${s.model === 'qwen' ? `the ${s.streams.join(' and ')} layers` : s.streams.join(', ')} from disk`),
          `runtime reserve ${fmtBytes(plan.cache_bytes)}; estimated peak ${fmtBytes(plan.peak_bytes)} (${plan.peak_bytes} bytes); smallest budget that fits: ${fmtBytes(plan.minimum_budget_bytes)}`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      } finally {
        await wc.close();
      }
    });
}

/** Layout and version of resolved model files: a diffusers directory says both in model_index.json, an official one by its DiT file name. */
function modelKind(files: ModelFiles): { layout: 'official' | 'diffusers'; version: string } {
  if (files.diffusers) return { layout: 'diffusers', version: files.diffusers.version };
  const name = files.dit.split(/[\\/]/).pop();
  const v = (Object.entries(DIT_FILE_OF) as [string, string][]).find(([, f]) => f === name)?.[0];
  return { layout: 'official', version: v ?? 'unknown' };
}

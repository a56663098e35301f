/**
 * `step1x generate "<prompt>" [-o out.png|-] [--width W --height H] [options]`: the official text-to-image
 * task (`inference.py --task_type t2i`): no input image; the MLLM sees a black 1024×1024 image with the
 * prompt, the output is width × height (multiples of 16, default 1024×1024), and the default negative
 * prompt is the official T2I one. Shares the model options of `edit`. Numerics: src/pipeline/edit-pipeline.ts.
 */
import type { Command } from 'commander';
import { ExitCode, Step1xError } from '../errors.js';
import { resolveModelFiles } from '../io/model-files.js';
import { outputFormatOf } from '../pipeline/output.js';
import { installInterruptCleanup } from '../pipeline/output.js';
import { createReporter, fmtBytes, fmtSeconds } from './progress.js';
import { checkInstruction, checkNoiseFile } from './options.js';
import { checkOptionsUpFront, checkWritable, modelOptions, runOne, sharedRequestOptions, summary, withPipeline, type EditCliOptions } from './edit.js';

/** A width or height for text-to-image: an integer multiple of 16 in [16, 4096], else a usage error naming the nearest valid sizes. */
export function t2iSide(name: string, v: string): number {
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isInteger(n) || n < 16 || n > 4096)
    throw new Step1xError(`--${name} must be an integer multiple of 16 in [16, 4096], got "${v}"`, ExitCode.USAGE);
  if (n % 16) {
    const lo = Math.max(16, Math.floor(n / 16) * 16), hi = Math.min(4096, Math.ceil(n / 16) * 16);
    throw new Step1xError(`--${name} ${n} is not a multiple of 16 (the latent is packed 2×2 over 8× downsampling); nearest valid: ${lo === hi ? lo : `${lo} or ${hi}`}`, ExitCode.USAGE);
  }
  return n;
}

/** Default output name: the prompt's first words, safe for any file system. */
export function defaultT2iOutput(prompt: string): string {
  const slug = prompt.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 48).replace(/-+$/, '');
  return `${slug || 'generated'}.png`;
}

export function register(program: Command): void {
  modelOptions(
    program
      .command('generate')
      .description('text-to-image: generate an image from a prompt (the official --task_type t2i)')
      .argument('<prompt>', 'what to draw')
      .option('-o, --output <file>', 'output .png, .jpg/.jpeg or .webp, or - for PNG on stdout (default: the prompt\'s first words + .png)')
      .option('--width <n>', 'output width, a multiple of 16', '1024')
      .option('--height <n>', 'output height, a multiple of 16', '1024')
      .option('--negative <text>', 'negative prompt (default: the official T2I negative prompt, see README)')
      .option('--noise <file>', 'initial latent noise [1, 16, H/8, W/8] from a safetensors file holding that one tensor'),
  ).action(async (prompt: string, o: EditCliOptions & { width: string; height: string }) => {
    installInterruptCleanup();
    const base = sharedRequestOptions(o);
    const width = t2iSide('width', o.width), height = t2iSide('height', o.height);
    if (!prompt.trim()) throw new Step1xError('the prompt is empty', ExitCode.USAGE);
    checkInstruction(prompt, 'the prompt');
    const output = o.output ?? defaultT2iOutput(prompt);
    if (output === '-' && process.stdout.isTTY) throw new Step1xError('refusing to write a PNG to a terminal: pass -o FILE or redirect stdout', ExitCode.USAGE);
    await checkOptionsUpFront(o);
    if (o.noise !== undefined) await checkNoiseFile(o.noise, [height / 8, width / 8]);
    checkWritable(output);
    outputFormatOf(output); // an unsupported extension is refused before any work
    const files = resolveModelFiles(o.model, { version: base.version });
    const rep = createReporter({ quiet: o.quiet });
    await withPipeline(files, o, rep, async (pipe, meta) => {
      const res = await runOne(pipe, { ...base, instruction: prompt, width, height }, { path: output }, rep, meta);
      rep.done(`wrote ${output === '-' ? 'stdout' : output} (${res.image.width}×${res.image.height}) in ${fmtSeconds(res.timings.total ?? 0)}, peak GPU ${fmtBytes(res.peakGpuBytes)}`);
      if (o.json) (output === '-' ? process.stderr : process.stdout).write(`${JSON.stringify(summary(res, output))}\n`);
    });
  });
}

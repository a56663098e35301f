/**
 * `step1x edit <image|-> <instruction> [-o out.png|.jpg|.webp|-]`, and what `step1x batch`
 * (src/cli/batch.ts) and `step1x generate` share with it: options, progress rendering, the pipeline
 * lifetime. Thin: parse and validate options, resolve the model, render progress, write outputs
 * atomically. All numerics live in src/pipeline/edit-pipeline.ts.
 */
import type { Command } from 'commander';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { ExitCode, Step1xError } from '../errors.js';
import { resolveModelFiles, type ModelFiles } from '../io/model-files.js';
import { readImage } from '../io/image.js';
import { checkRegularFile } from '../io/safe-read.js';
import type { EditPipeline, EditRequest, EditResult, Progress } from '../pipeline/edit-pipeline.js';
import { checkOutputPath, installInterruptCleanup, readInputImage, writeOutputPng, type OutputTarget } from '../pipeline/output.js';
import { checkInstruction, checkNoiseFile, checkSizeLevel, floatOpt, intOpt, parseBytes } from './options.js';
import { reasonSummary } from '../pipeline/reason-edit.js';
import { createReporter, fmtBytes, fmtSeconds, type Reporter } from './progress.js';
import { packageVersion } from './main.js';
import { collect, openWeightChoice, type WeightCliOptions } from './weights.js';
import { gpuOptions, type KernelCliOptions } from './gpu-options.js';
import { registerRunInput, stdoutWasClosed } from '../io/safe-write.js';
import { sanitizeForTerminal } from './sanitize.js';
import { parseCacheOption } from '../pipeline/teacache.js';
import { formatDryRun } from '../runtime/dryrun/index.js';
import { outputFormatOf } from '../pipeline/output.js';
import { parseCompat, parseVersion } from '../pipeline/official.js';

export interface EditCliOptions extends WeightCliOptions, KernelCliOptions {
  output?: string;
  model?: string;
  steps: string;
  cfg: string;
  seed: string;
  /** absent: the version's own (512; 1024 for v1.2) */
  size?: string;
  negative: string;
  nativeSize?: boolean;
  noise?: string;
  json?: boolean;
  quiet?: boolean;
  vramBudget?: string;
  sampleEncode?: boolean;
  ignoreExif?: boolean;
  version?: string;
  compat: string;
  cfgTruncate?: string;
  /** `teacache[:THRESHOLD]` or `none`. */
  cache?: string;
  mask?: string;
  maskFeather?: string;
  think?: boolean;
  reflect?: boolean;
  maxRounds?: string;
  keepRounds?: string;
}

/** --think / --reflect (edit, plan): only a v1.2 directory has the thinker (exit 2 otherwise). */
export function requireV12Reasoning(files: Pick<ModelFiles, 'source' | 'diffusers'>): void {
  if (files.diffusers?.version !== 'v1.2')
    throw new Step1xError(`--think / --reflect need a v1.2 model directory (diffusers layout); ${files.source} is ${files.diffusers?.version ?? 'not one'}`, ExitCode.USAGE);
}

/** --think / --reflect / --max-rounds / --keep-rounds (v1.2 models only; checked again once the model is known). */
export function reasonFromOptions(o: EditCliOptions): EditRequest['reason'] {
  if (o.maxRounds !== undefined && !o.reflect) throw new Step1xError('--max-rounds needs --reflect', ExitCode.USAGE);
  if (o.keepRounds !== undefined && !o.think && !o.reflect) throw new Step1xError('--keep-rounds needs --think or --reflect', ExitCode.USAGE);
  if (!o.think && !o.reflect) return undefined;
  // STEP1X_THINKER_MAX_TOKENS / STEP1X_THINKER_RETRIES shorten the thinker for tests (recorded in the PNG)
  const env = (name: string, max: number) => {
    const v = process.env[name];
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || +v < 1 || +v > max) throw new Step1xError(`${name} must be a decimal integer in [1, ${max}], got "${v}"`, ExitCode.USAGE);
    return +v;
  };
  return {
    think: !!o.think, reflect: !!o.reflect, maxRounds: o.maxRounds === undefined ? 3 : intOpt('max-rounds', o.maxRounds, 1, 10),
    maxNewTokens: env('STEP1X_THINKER_MAX_TOKENS', 128), maxRetries: env('STEP1X_THINKER_RETRIES', 20),
  };
}

export { parseBytes } from './options.js';

/** Largest --mask (pixels, checked from its header) for a photo: 4× its area, at least 4 megapixels. */
export function maskPixelLimit(width: number, height: number): number {
  return Math.max(4 * width * height, 4_000_000);
}

/** The size level an edit runs at without --size: the official 512, or the v1.2 pipeline's 1024. */
export function defaultSizeLevel(files: ModelFiles): number {
  return files.diffusers?.version === 'v1.2' ? 1024 : 512;
}

/** Fail before any model work if the output cannot be written (see src/pipeline/output.ts). */
export function checkWritable(path: string, inputs: readonly string[] = []): void {
  checkOutputPath(path, inputs);
}

/** The options `edit`, `batch` and `generate` share. */
export function sharedRequestOptions(o: EditCliOptions): Omit<EditRequest, 'image' | 'instruction'> {
  checkInstruction(o.negative ?? '', '--negative');
  return {
    steps: intOpt('steps', o.steps, 1, 1000),
    cfg: floatOpt('cfg', o.cfg, 0, 100),
    seed: intOpt('seed', o.seed, 0, Number.MAX_SAFE_INTEGER),
    negative: o.negative,
    noisePath: o.noise,
    compat: parseCompat(o.compat),
    cfgTruncate: o.cfgTruncate !== undefined ? floatOpt('cfg-truncate', o.cfgTruncate, 0, 1) : undefined,
    version: o.version !== undefined ? parseVersion(o.version) : undefined,
    cache: parseCacheOption(o.cache),
  };
}

export function requestFromOptions(o: EditCliOptions): Omit<EditRequest, 'image' | 'instruction'> {
  return {
    ...sharedRequestOptions(o),
    ...(o.size !== undefined ? { size: intOpt('size', o.size, 16, 4096) } : {}),
    nativeSize: Boolean(o.nativeSize),
    sampleEncode: Boolean(o.sampleEncode),
    ...(o.maskFeather !== undefined ? { maskFeather: floatOpt('mask-feather', o.maskFeather, 0, 1000) } : {}),
  };
}

/** Option checks that need no GPU and no model: numbers, the budget, --noise (exists, float, finite). */
export async function checkOptionsUpFront(o: EditCliOptions): Promise<void> {
  if (o.vramBudget !== undefined) parseBytes(o.vramBudget);
  if (o.json && o.output !== '-' && stdoutWasClosed()) throw new Step1xError('--json: stdout is closed (EBADF); redirect it to a file', ExitCode.OUTPUT);
  if (o.noise !== undefined) await checkNoiseFile(o.noise);
}

const STAGE_LABEL: Record<string, string> = { embed: 'Qwen2.5-VL layers', encode: 'VAE encode', decode: 'VAE decode', sample: 'sampling', reason: 'thinking' };

/** Counted work (steps, layers, VAE levels) as a bar / timestamped line; stage messages as text. */
export function render(rep: Reporter, p: Progress): void {
  if (p.step !== undefined && p.total) rep.progress(STAGE_LABEL[p.stage] ?? p.stage, p.step, p.total, p.detail ?? (p.skipped ? `${p.skipped} cached` : undefined));
  else if (p.done) rep.done(p.message ?? p.stage);
  else rep.update(p.message ?? p.stage);
}

export async function runOne(pipe: EditPipeline, req: EditRequest, target: OutputTarget, rep: Reporter, meta: Record<string, string>): Promise<EditResult> {
  const it = pipe.run(req);
  for (;;) {
    const r = await it.next();
    if (r.done) {
      await writeOutputPng(target, r.value.image, { ...meta, ...r.value.parameters });
      if (r.value.dryrun) process.stderr.write(formatDryRun(r.value.dryrun)); // also under --quiet: it is the result
      return r.value;
    }
    render(rep, r.value);
  }
}

/**
 * Load the pipeline (models load per stage inside it), run `fn` with the PNG metadata common to every
 * output, then print the STEP1X_PROFILE report once and release the GPU, whatever happened.
 */
export async function withPipeline(files: ModelFiles, o: EditCliOptions, rep: Reporter, fn: (pipe: EditPipeline, meta: Record<string, string>) => Promise<void>): Promise<void> {
  const wc = await openWeightChoice(o, files.dit, (m) => process.stderr.write(`step1x: warning: ${sanitizeForTerminal(m)}\n`));
  const { EditPipeline } = await import('../pipeline/edit-pipeline.js'); // models load only for edits
  let pipe: EditPipeline;
  try {
    pipe = await EditPipeline.load(files, { vramBudget: o.vramBudget ? parseBytes(o.vramBudget) : undefined, weights: wc.weights, loras: wc.loras, device: gpuOptions(o), onProgress: (p) => render(rep, p) });
  } catch (e) {
    await wc.close();
    throw e;
  }
  try {
    await fn(pipe, { 'step1x:version': packageVersion(), model: files.dit.split(/[\\/]/).pop()! });
  } finally {
    rep.stop();
    if (pipe.gpu.profiling) {
      await pipe.gpu.profileReport({ print: true }); // STEP1X_PROFILE=1: complete numbers, printed once
      pipe.gpu.disableProfiling();
    }
    await pipe.close();
    await wc.close();
  }
}

export function summary(res: EditResult, output: string): Record<string, unknown> {
  return {
    output,
    task: res.task,
    dit_version: res.version,
    compat: res.behaviour.compat,
    cfg_truncate: res.behaviour.cfgTruncate,
    seed: res.seed,
    width: res.image.width,
    height: res.image.height,
    working_size: res.workingSize,
    timings_s: res.timings,
    peak_gpu_bytes: res.peakGpuBytes,
    peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
    ...(res.cache ? { cache: { kind: res.cache.kind, threshold: res.cache.threshold, skipped_steps: res.cache.skippedSteps } } : {}),
    ...(res.dryrun ? { dryrun: res.dryrun } : {}),
  };
}

/** Options of every command that runs the model (edit, batch, generate). */
export function modelOptions(c: Command): Command {
  return c
    .option('--model <dir>', 'model directory, official or diffusers layout (default: $STEP1X_MODEL, then the Hugging Face cache)')
    .option('--version <v>', 'checkpoint version v1.2, v1.1 or v1.0 (default: told by the model directory; from the Hugging Face cache the best present, v1.2 > v1.1 > v1.0; with both official files in a directory, v1.1)')
    .option('--compat <mode>', 'official behaviour to follow: current (Dec 2025: CFG truncation 0.93, LANCZOS input resize, SDPA text attention) or 2025-05 (the May 2025 code: none of these)', 'current')
    .option('--cfg-truncate <t>', 'timesteps_truncate: diff-norm CFG while t > this (default 0.93; 1 in --compat 2025-05); 1 disables')
    .option('--steps <n>', 'sampling steps', '28')
    .option('--cfg <g>', 'classifier-free guidance scale', '6.0')
    .option('--seed <n>', 'noise seed (documented xoshiro128** + Box-Muller RNG, see README)', '42')
    .option('--vram-budget <bytes>', 'GPU memory budget, e.g. 12GB: models that fit together stay resident across stages and images; otherwise they load per stage and stream block by block')
    .option('--weights <format>', 'Linear weights of the DiT and Qwen on the GPU: bf16, fp8 (E4M3), q8 or q4 (block-quantized, see README); default: as stored')
    .option('--lora <file[:scale]>', 'apply a kohya-format LoRA to the DiT (repeatable; scale default 1)', collect)
    .option('--cache <mode>', 'teacache[:THRESHOLD] skips DiT blocks on steps whose input barely changed (official default 0.2; quality cost in README), or none')
    .option('--json', 'print one JSON result line (stdout, or stderr when the image goes to stdout)')
    .option('--quiet', 'no progress output');
}

/** The options `edit` and `batch` share. */
export function editOptions(c: Command): Command {
  return modelOptions(c)
    .option('--size <n>', 'size level: working area ≈ size², sides floored to multiples of 16 (official size_level; default 512, 1024 with a v1.2 model as its pipeline has it)')
    .option('--negative <text>', 'negative prompt (the official code hard-codes "")', '')
    .option('--native-size', 'keep the working resolution instead of resizing back to the input size (avoids the resize-back blur)')
    .option('--sample-encode', 'sample the VAE posterior like the official code (default: its mean, deterministic)')
    .option('--ignore-exif', 'ignore EXIF orientation, as the official code does');
}

export function register(program: Command): void {
  editOptions(
    program
      .command('edit')
      .description('edit an image with an instruction')
      .argument('<image>', 'input image (PNG, JPEG, WebP, ...) or - for stdin')
      .argument('<instruction>', 'what to change, e.g. "make it winter"')
      .option('-o, --output <file>', 'output .png, .jpg/.jpeg or .webp, or - for PNG on stdout (default: <input>-edited.png)')
      .option('--noise <file>', 'initial latent noise [1, 16, H/8, W/8] from a safetensors file holding that one tensor')
      .option('--mask <file>', 'region mask image, any size: white = may change, black = keep the input pixels')
      .option('--mask-feather <px>', 'soften the mask border by this many pixels (Gaussian, sigma = px/2)')
      .option('--think', 'v1.2 models: let the MLLM rewrite the instruction before the edit (1 generation)')
      .option('--reflect', 'v1.2 models: judge each result and correct it, up to --max-rounds edits (5 generations per round)')
      .option('--max-rounds <n>', 'with --reflect: most edit rounds (official max_try_cnt)', undefined)
      .option('--keep-rounds <dir>', 'with --think/--reflect: also write every round\'s image as DIR/round<r>.png'),
  ).action(async (image: string, instruction: string, o: EditCliOptions) => {
    installInterruptCleanup();
    const base = requestFromOptions(o);
    const reason = reasonFromOptions(o);
    if (!instruction.trim()) throw new Step1xError('the instruction is empty', ExitCode.USAGE);
    checkInstruction(instruction, 'the instruction');
    const output = o.output ?? (image === '-' ? '-' : join(dirname(image), `${basename(image, extname(image))}-edited.png`));
    if (output === '-' && process.stdout.isTTY) throw new Step1xError('refusing to write a PNG to a terminal: pass -o FILE or redirect stdout', ExitCode.USAGE);
    if (o.maskFeather !== undefined && !o.mask) throw new Step1xError('--mask-feather needs --mask FILE', ExitCode.USAGE);
    await checkOptionsUpFront(o);
    if (image !== '-' && !existsSync(image)) throw new Step1xError(`${image}: no such file`, ExitCode.INPUT);
    if (image !== '-') registerRunInput(image, 'the input image');
    if (o.mask) {
      checkRegularFile(o.mask, 1 << 30, '--mask', ExitCode.INPUT); // a FIFO or device would block or never end
      registerRunInput(o.mask, 'the --mask image');
    }
    if (o.noise) registerRunInput(o.noise, 'the --noise file');
    checkWritable(output);
    outputFormatOf(output); // an unsupported extension is refused before any work
    const img = await readInputImage(image, { ignoreExif: o.ignoreExif });
    const files = resolveModelFiles(o.model, { version: base.version });
    const [ww, wh] = checkSizeLevel(img.width, img.height, base.size ?? defaultSizeLevel(files));
    if (o.noise !== undefined) await checkNoiseFile(o.noise, [wh / 8, ww / 8]);
    // a mask is resized to the photo: one far larger only costs memory (a 10000² 16-bit mask took 1.5 GB)
    const mask = o.mask ? await readImage(o.mask, { maxPixels: maskPixelLimit(img.width, img.height) }) : undefined;
    if (reason) requireV12Reasoning(files);
    if (o.keepRounds !== undefined) {
      try {
        mkdirSync(o.keepRounds, { recursive: true });
        if (!statSync(o.keepRounds).isDirectory()) throw new Error('not a directory');
      } catch (e) {
        throw new Step1xError(`--keep-rounds ${o.keepRounds}: cannot use it as a directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, ExitCode.OUTPUT);
      }
    }
    const rep = createReporter({ quiet: o.quiet });
    await withPipeline(files, o, rep, async (pipe, meta) => {
      const res = await runOne(pipe, { ...base, image: img, instruction, mask, reason }, { path: output }, rep, meta);
      const kept: string[] = [];
      if (o.keepRounds !== undefined && res.reason)
        for (const r of res.reason.rounds) {
          const path = join(o.keepRounds, `round${r.round}.png`);
          await writeOutputPng({ path }, r.image, { ...meta, ...res.parameters, round: String(r.round), 'round-prompt': r.prompt, ...(r.reflection ? { verdict: r.reflection } : {}) });
          kept.push(path);
        }
      rep.done(`wrote ${output === '-' ? 'stdout' : output} (${res.image.width}×${res.image.height}) in ${fmtSeconds(res.timings.total ?? 0)}, peak GPU ${fmtBytes(res.peakGpuBytes)}`);
      const rs = res.reason && reason ? { reason: { ...reasonSummary(res.reason, reason), ...(kept.length ? { kept_rounds: kept } : {}) } } : {};
      if (o.json) (output === '-' ? process.stderr : process.stdout).write(`${JSON.stringify({ ...summary(res, output), ...rs })}\n`);
    });
  });
}

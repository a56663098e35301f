/**
 * The v1.2 side of EditPipeline (pipeline/edit-pipeline.ts): the request's options checked against what a v1.2
 * edit can take, the one plan (plan.ts, v1.2 mode) made and followed through the pipeline's ModelHost and stage
 * marks, the plain or reasoning edit run (v12-edit.ts, reason-edit.ts; the thinker's calls are 'reason' stages
 * on the embed stage's hosted Qwen, planned as such), the mask composited, and the result with its PNG parameters.
 */
import type { Gpu } from '../runtime/gpu.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import type { ModelFiles } from '../io/model-files.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { resize, type RgbImage } from '../io/resize.js';
import { inputProcessSize } from '../models/qwen25vl/processor.js';
import { buildV12InputIds } from '../models/qwen25vl/prompt-v12.js';
import type { QwenTokenizer } from '../models/qwen25vl/tokenizer.js';
import { runV12Edit, V12_DEFAULTS, type V12StageOptions } from './v12-edit.js';
import { generatorOf, hostV12Qwen, qwenStreamNote } from './v12-stages.js';
import { withOomFallback } from './stages.js';
import type { ThinkerModel } from './reason/client.js';
import { describeReasonEvent, pumpEvents, reasonParameters, runReasonEdit, thinkerTextTokens, type ReasonEditResult } from './reason-edit.js';
import { behaviour as officialBehaviour } from './official.js';
import { loadsSince, type ModelHost } from './model-host.js';
import { v12ImageTokens, THINKER_PLAN_TEXT_TOKENS, V12_PLAN_PROMPT_TOKENS } from './plan.js';
import { RunPlan } from './run-plan.js';
import { compositeImage, packedMask, prepareMask, resizeMask, type Mask } from './mask.js';
import type { EditRequest, EditResult, LoadOptions, Progress } from './edit-pipeline.js';

/** What runV12Request uses of the EditPipeline. */
export interface V12Host {
  gpu: Gpu;
  files: ModelFiles;
  tokenizer: QwenTokenizer;
  models: ModelHost;
  opts: LoadOptions;
  fullBudget?: number;
  /** A stage begins: pool trim, GPU sync, dry-run mark. */
  stage: (s: 'reason' | 'embed' | 'encode' | 'sample' | 'decode') => Promise<void>;
}

/** `--noise FILE` for a v1.2 edit: one tensor (the noise) or `noise` and `ref_eps`, each [1, 16, h, w]. */
export async function readNoiseTensors(path: string, h: number, w: number): Promise<{ noise: Float32Array; refEps?: Float32Array }> {
  const f = await SafetensorsFile.open(path);
  try {
    const names = [...f.tensors.keys()];
    const pair = names.length === 2 && names.includes('noise') && names.includes('ref_eps');
    if (names.length !== 1 && !pair) throw new Step1xError(`--noise ${path}: expected one tensor, or "noise" and "ref_eps"; found ${names.join(', ')}`, ExitCode.USAGE);
    const want = [1, 16, h, w];
    const read = async (n: string) => {
      const info = f.tensors.get(n)!;
      if (info.shape.length !== 4 || info.shape.some((d, i) => d !== want[i]))
        throw new Step1xError(`--noise ${path}: tensor "${n}" has shape ${fmtShape(info.shape)}, this edit needs ${fmtShape(want)}`, ExitCode.USAGE);
      return f.readF32(n);
    };
    return pair ? { noise: await read('noise'), refEps: await read('ref_eps') } : { noise: await read(names[0]) };
  } finally {
    await f.close();
  }
}

/**
 * EditPipeline.run for a v1.2 model: the v1.2 edit with the fork's defaults for what the request leaves open,
 * through the same plan, ModelHost and stage marks as v1.0/v1.1: the plan (plan.ts, v1.2 mode) decides
 * residency and the loaders' budgets, so `step1x plan` prints what this run does. Options with no v1.2
 * counterpart are refused by name.
 */
export async function* runV12Request(host: V12Host, req: EditRequest): AsyncGenerator<Progress, EditResult> {
  const d = host.files.diffusers, g = host.gpu;
  if (!d) throw new Step1xError(`${host.files.source}: a v1.2 DiT outside a diffusers-layout directory`, ExitCode.WEIGHTS);
  const refuse = ([
    ['a text-to-image run (no input image): v1.2 is an editing model', !req.image],
    ['--compat 2025-05: there was no May 2025 v1.2', req.compat === '2025-05'],
    ['--cfg-truncate: v1.2 rescales CFG at every step (the fork compares t in [0, 1000] with 0.93)', req.cfgTruncate !== undefined],
    ['--negative: the v1.2 pipeline runs the negative side on ""', !!req.negative],
    ['--mask with --think / --reflect: later rounds edit the previous round\'s output', !!req.mask && !!req.reason],
  ] as const).filter(([, on]) => on).map(([n]) => n);
  if (refuse.length) throw new Step1xError(`v1.2 edit: not supported with a v1.2 model: ${refuse.join('; ')}`, ExitCode.USAGE);
  const photo = req.image!;
  const steps = req.steps ?? V12_DEFAULTS.steps, cfg = req.cfg ?? V12_DEFAULTS.cfg, size = req.size ?? V12_DEFAULTS.sizeLevel, seed = req.seed ?? 42;
  const [w, h] = inputProcessSize(photo.width, photo.height, size);
  const lh = h / 8, lw = w / 8;
  const given: { noise?: Float32Array; refEps?: Float32Array } = req.noise ? { noise: req.noise } : req.noisePath ? await readNoiseTensors(req.noisePath, lh, lw) : {};
  const mask: Mask | undefined = req.mask ? prepareMask(req.mask, photo.width, photo.height, req.maskFeather ?? 0) : undefined;
  const maskPacked = mask ? packedMask(resizeMask(mask, lw, lh)) : undefined;
  const timings: Record<string, number> = {};
  const tStart = performance.now();
  g.pool.resetPeak();
  g.dryrun?.reset();
  const loads0 = { ...host.models.loads };
  // the one plan (as for v1.0/v1.1): its text span is the longer of its default and this prompt's
  const imageTokens = v12ImageTokens(w, h);
  const keep = buildV12InputIds(host.tokenizer, req.instruction, imageTokens).keepLen;
  const textTokens = Math.max(imageTokens + V12_PLAN_PROMPT_TOKENS, keep);
  // a reasoning edit's thinker runs on the embed stage's Qwen (the plan's 'reason' stage): its longest prompt
  // is the longer of the plan's default and this instruction's (host.tokenizer is the directory's processor/)
  const reasonPlan = req.reason ? { reflect: req.reason.reflect, textTokens: Math.max(THINKER_PLAN_TEXT_TOKENS, thinkerTextTokens(host.tokenizer, req.instruction, req.reason)) } : undefined;
  const run = await RunPlan.make(g, host.files, { width: w, height: h, weights: host.opts.weights, loras: host.opts.loras, budget: host.fullBudget, deviceBytes: g.memoryBytes, textTokens, reason: reasonPlan }, host.models);
  const STAGE_NOTE = { embed: 'Qwen2.5-VL: embedding the instruction and the image', encode: 'VAE: encoding the reference image', sample: 'sampling', decode: 'VAE: decoding' } as const;
  let skipped = 0;
  // seconds per stage, summed over the rounds of a reasoning edit
  let last: string | undefined, t0 = performance.now();
  const lap = (next?: string) => {
    const now = performance.now();
    if (last) timings[last] = +((timings[last] ?? 0) + (now - t0) / 1000).toFixed(3);
    (last = next), (t0 = now);
  };
  const runOpts = (emit: (p: Progress) => void): V12StageOptions => {
    return {
      // read when each stage loads: a re-plan in one stage sets the next one's budget
      models: host.models, budget: { get embed() { return run.budgetFor('embed'); }, get sample() { return run.budgetFor('sample'); } },
      replan: { embed: (what, held) => run.replan('embed', what, held), sample: (what, held) => run.replan('sample', what, held) }, weights: host.opts.weights, loras: host.opts.loras, cache: req.cache, maskPacked,
      onStage: async (s) => {
        lap(s);
        emit({ stage: s, message: STAGE_NOTE[s] });
        await host.stage(s);
      },
      onInfo: (stage, message) => emit({ stage, message }),
      onProgress: (stage, step, total, sk) => {
        if (stage === 'sample') skipped = sk ?? 0;
        emit({ stage, step, total, ...(stage === 'sample' && req.cache ? { skipped: sk } : {}) });
      },
    };
  };
  yield { stage: 'preprocess', message: `v1.2 edit: ${steps} steps, cfg ${cfg}, ${w}x${h}` };
  // round r of a reasoning edit draws from seed + r; round 0 (and a plain edit) takes --noise when given
  const editOf = async (prompt: string, img: RgbImage, r: number, emit: (p: Progress) => void) => runV12Edit(g, d, img, {
    prompt, sizeLevel: size, steps, cfg, seed: seed + r, processorPixels: V12_DEFAULTS.processorPixels, ...(r === 0 ? given : {}), run: runOpts(emit),
  });
  let out: RgbImage, reason: ReasonEditResult | undefined;
  if (req.reason) {
    const ro = req.reason, small = new Map<RgbImage, RgbImage>();
    let noted = false;
    // each thinker call: a 'reason' stage on the edit's Qwen (held between calls and into the next embed
    // stage when models go per stage), under the plan's budget for it, re-planned on GPU out-of-memory
    const thinker = (emit: (p: Progress) => void): ThinkerModel => async (fn) => {
      lap('reason');
      await host.stage('reason');
      return withOomFallback(g, 'Qwen2.5-VL (thinker)', run.budgetFor('reason'), (budget) => hostV12Qwen(g, d, { models: host.models, weights: host.opts.weights }, budget, async (h) => {
        if ((h.qwen.streamed.text || h.qwen.streamed.vision) && !noted) {
          noted = true; // said once a request, as the embed stage says it
          emit({ stage: 'reason', message: qwenStreamNote(h.qwen) });
        }
        return fn(await generatorOf(g, h));
      }, true), (what, held) => run.replan('reason', what, held), (m) => emit({ stage: 'reason', message: m }));
    };
    try {
      reason = yield* pumpEvents<Progress, ReasonEditResult>((emit) => runReasonEdit({ tok: host.tokenizer, model: thinker(emit) }, photo, { prompt: req.instruction, ...ro, seed, onEvent: (e) => emit({ stage: 'reason', message: describeReasonEvent(e), done: e.type !== 'round' }),
        onToken: (kind, text, n) => emit({ stage: 'reason', step: n, total: ro.maxNewTokens ?? 128, detail: `${kind}: ${text.replace(/\s+/g, ' ').slice(-60)}` }) },
        async (p, img, r) => {
          const res = await editOf(p, img, r, emit);
          lap();
          small.set(res.image, res.small);
          return res.image;
        }));
    } finally {
      // per stage, the last judge's Qwen is still held: the request leaves nothing loaded but what the plan keeps
      if (!host.models.keep) await host.models.release('qwen');
    }
    lap();
    const fin = reason.rounds[reason.finalIndex].image;
    out = req.nativeSize ? small.get(fin)! : fin;
  } else {
    const res = yield* pumpEvents<Progress, { small: RgbImage; image: RgbImage }>((emit) => editOf(req.instruction, photo, 0, emit));
    lap();
    out = req.nativeSize ? res.small : res.image;
  }
  // outside the mask the written image is the input's own pixels (the working image with --native-size)
  if (mask) out = out.width === photo.width && out.height === photo.height ? compositeImage(out, photo, mask) : compositeImage(out, resize(photo, w, h, 'lanczos'), resizeMask(mask, out.width, out.height));
  timings.total = +((performance.now() - tStart) / 1000).toFixed(3);
  const parameters: Record<string, string> = {
    task: 'edit', instruction: req.instruction, negative: '',
    seed: given.noise ? `${seed} (noise${given.refEps ? ' and ref_eps' : ''} from ${req.noisePath ?? 'caller'})` : String(seed),
    steps: String(steps), cfg: String(cfg), 'dit-version': 'v1.2', layout: 'diffusers', size: String(size), 'working-size': `${w}x${h}`,
    'input-resize': 'lanczos', 'vae-encode': 'sample', models: d.root.split(/[\\/]/).pop() ?? d.root,
  };
  if (host.opts.weights) parameters.weights = host.opts.weights;
  if (host.opts.loras?.length) parameters.lora = host.opts.loras.map((l) => `${l.path.split(/[\\/]/).pop()}:${l.multiplier}`).join(', ');
  if (req.mask) parameters.mask = `${req.mask.width}x${req.mask.height}${req.maskFeather ? `, feather ${req.maskFeather}px` : ''}`;
  if (req.cache) parameters.cache = `teacache:${req.cache.threshold} (skipped ${skipped} of ${steps} steps)`;
  if (reason) Object.assign(parameters, reasonParameters(reason, req.reason!));
  const cacheInfo = req.cache ? { cache: { kind: 'teacache' as const, threshold: req.cache.threshold, skippedSteps: skipped } } : {};
  const dry = g.dryrun ? { dryrun: { ...g.dryrun.report(), model_loads: loadsSince(host.models, loads0) } } : {};
  return { image: out, task: 'edit', version: 'v1.2', behaviour: officialBehaviour('current'), workingSize: [w, h], seed, timings, peakGpuBytes: g.pool.peakLiveBytes, parameters, reason, ...cacheInfo, ...dry };
}

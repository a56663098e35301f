/**
 * The edit pipeline, as the official `ImageGenerator.generate_image` (inference.py):
 *   preprocess   input_process_image at size_level (PIL LANCZOS; May 2025: bicubic; sides multiples of 16)
 *   embed        Qwen2.5-VL over [instruction, negative] with the reference image → llm_embedding, mask
 *   encode       VAE encode of the reference (posterior mean by default; the official code samples)
 *   sample       get_schedule + prepare + denoise with CFG (DiT + connector)
 *   decode       unpack + VAE decode, clamp, to_pil_image truncation
 *   postprocess  PIL bicubic resize back to the input size (unless nativeSize)
 * Without an input image it is the official text-to-image task (`task_type t2i`): the MLLM sees a black
 * 1024×1024 image with the prompt, the DiT denoises the noise tokens alone (no reference), and the
 * image is decoded at width × height. Which official behaviour (current or May 2025) is followed is
 * `req.compat` (official.ts); the checkpoint version is told by the weights (`req.version` may state it).
 * Where the models live is the one plan's (run-plan.ts, model-host.ts): all kept resident when they fit
 * the budget together (a batch loads each once), else each loaded when its stage runs and freed after it,
 * the big models streaming their blocks from disk where even one does not fit.
 * `run()` yields progress events and returns the result; a `trace` sees every intermediate under the
 * golden names of the `e2e` case (`mid.*`, `out.*`), which is how the golden kinds check each stage.
 */
import { Gpu, type GpuOptions } from '../runtime/gpu.js';
import type { DryRunReport } from '../runtime/dryrun/recorder.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { tokenizerDirOf, type ModelFiles } from '../io/model-files.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { resize, type RgbImage } from '../io/resize.js';
import { inputProcessImage, qwenProcessImage, STEP1X_MAX_PIXELS, STEP1X_MIN_PIXELS } from '../models/qwen25vl/processor.js';
import { runV12Request } from './v12-run.js';
import type { ReasonEditResult } from './reason-edit.js';
import { QwenTokenizer } from '../models/qwen25vl/tokenizer.js';
import { buildStep1xInputIds } from '../models/qwen25vl/prompt.js';
import { initialNoise } from './rng.js';
import type { WeightsOption } from '../nn/weight.js';
import type { LoraFile } from '../nn/lora.js';
import { behaviour as officialBehaviour, T2I_MLLM_IMAGE_SIDE, T2I_NEGATIVE_PROMPT, type CompatMode, type OfficialBehaviour } from './official.js';
import { checkVersion, versionOfKeys, type DitVersion } from '../models/dit-config.js';
import { Checkpoint } from '../io/checkpoint.js';
import { runDenoise, runEmbed, runVaeDecode, runVaeEncode, type Trace } from './stages.js';
import { ModelHost, loadsSince, type ModelKind } from './model-host.js';
import { RunPlan } from './run-plan.js';
import type { CacheOption } from './teacache.js';
import { validateModelFiles } from './model-check.js';
import { compositeImage, packedMask, prepareMask, resizeMask, type Mask } from './mask.js';

export interface EditRequest {
  /** The image to edit; absent = text-to-image. */
  image?: RgbImage;
  /** Text-to-image output size (multiples of 16; default 1024 × 1024). */
  width?: number;
  height?: number;
  instruction: string;
  negative?: string;
  steps?: number;
  cfg?: number;
  seed?: number;
  /** size_level (official default 512). */
  size?: number;
  nativeSize?: boolean;
  /** Sample the VAE posterior (official) instead of taking its mean. */
  sampleEncode?: boolean;
  /** Initial noise [1, 16, H/8, W/8]: given directly, or a safetensors file holding that one tensor. */
  noise?: Float32Array;
  noisePath?: string;
  /** TeaCache: skip the DiT blocks on steps whose input barely changed (src/pipeline/teacache.ts). */
  cache?: CacheOption;
  /** Region mask (white = may change, black = keep), any size; feathered by maskFeather pixels. */
  mask?: RgbImage;
  maskFeather?: number;
  /** 'current' (default) or '2025-05' (the May 2025 official behaviour, official.ts). */
  compat?: CompatMode;
  /** `timesteps_truncate` (default: the compat mode's, 0.93 current / 1 May 2025); 1 disables. */
  cfgTruncate?: number;
  /** Checkpoint version the caller expects; the weights must agree. */
  version?: DitVersion;
  /** v1.2 only: rewrite the instruction first (`think`), judge and correct up to maxRounds (`reflect`). */
  reason?: { think: boolean; reflect: boolean; maxRounds: number; maxNewTokens?: number; maxRetries?: number };
}

export interface Progress {
  stage: 'load' | 'preprocess' | 'embed' | 'encode' | 'sample' | 'decode' | 'postprocess' | 'reason';
  step?: number;
  total?: number;
  message?: string;
  /** A stage finished (message says what it did). */
  done?: boolean;
  /** sample: steps whose DiT blocks were skipped so far (TeaCache). */
  skipped?: number;
  /** Text after the counter (reason: the generation so far). */
  detail?: string;
}

export interface EditResult {
  image: RgbImage;
  task: 'edit' | 't2i';
  /** The checkpoint version the weights told. */
  version: DitVersion;
  behaviour: OfficialBehaviour;
  workingSize: [number, number];
  seed: number;
  timings: Record<string, number>;
  peakGpuBytes: number;
  /** Parameters recorded in the output PNG. */
  parameters: Record<string, string>;
  /** TeaCache: threshold and the steps whose blocks were skipped. */
  cache?: { kind: 'teacache'; threshold: number; skippedSteps: number };
  /** On a dry-run device (STEP1X_DRYRUN): what the run asked of it (README "Dry run"), and the model loads of this request. */
  dryrun?: DryRunReport & { model_loads: Record<ModelKind, number> };
  /** --think / --reflect: every round (with its image) and the thinker's work; `image` is the final round's. */
  reason?: ReasonEditResult;
}

export interface LoadOptions {
  vramBudget?: number;
  /** Linear weight format on the GPU (`--weights`; default as stored). */
  weights?: WeightsOption;
  /** LoRAs merged into (or attached to) the DiT (`--lora`). */
  loras?: LoraFile[];
  gpu?: Gpu;
  /** How to make the runtime when `gpu` is not given (kernel family, precision, tuned tiles). */
  device?: GpuOptions;
  onProgress?: (p: Progress) => void;
}

/** Read `--noise FILE`: a safetensors file holding exactly one tensor of shape [1, 16, h, w]. */
export async function readNoiseFile(path: string, h: number, w: number): Promise<Float32Array> {
  const f = await SafetensorsFile.open(path);
  try {
    const names = [...f.tensors.keys()];
    if (names.length !== 1) throw new Step1xError(`--noise ${path}: expected exactly one tensor, found ${names.length} (${names.slice(0, 5).join(', ')})`, ExitCode.USAGE);
    const info = f.tensors.get(names[0])!;
    const want = [1, 16, h, w];
    if (info.shape.length !== 4 || info.shape.some((d, i) => d !== want[i]))
      throw new Step1xError(`--noise ${path}: tensor "${names[0]}" has shape ${fmtShape(info.shape)}, this edit needs ${fmtShape(want)}`, ExitCode.USAGE);
    return await f.readF32(names[0]);
  } finally {
    await f.close();
  }
}

export { readNoiseTensors } from './v12-run.js';

export class EditPipeline {
  /** Models kept across stages and images when the VRAM plan fits them all (model-host.ts). */
  readonly models = new ModelHost();
  private constructor(
    readonly gpu: Gpu,
    readonly files: ModelFiles,
    readonly tokenizer: QwenTokenizer,
    /** The checkpoint version the DiT file's keys tell (read from its header at load). */
    readonly ditVersion: DitVersion,
    private readonly opts: LoadOptions,
    private readonly ownsGpu: boolean,
    /** --vram-budget as given. */
    private readonly fullBudget?: number,
  ) {}

  /** Checks the files and acquires the GPU; models are loaded per stage by `run()`. */
  static async load(files: ModelFiles, opts: LoadOptions = {}): Promise<EditPipeline> {
    opts.onProgress?.({ stage: 'load', message: 'checking the model files' });
    await validateModelFiles(files); // headers, keys and shapes of every file, before any stage (exit 4)
    opts.onProgress?.({ stage: 'load', message: 'opening the GPU and the tokenizer' });
    const tokenizer = QwenTokenizer.load(tokenizerDirOf(files));
    const ck = await Checkpoint.open(files.dit); // headers only: which version the weights are
    const ditVersion = versionOfKeys((n) => ck.has(n));
    await ck.close();
    const gpu = opts.gpu ?? (await Gpu.create(opts.device));
    return new EditPipeline(gpu, files, tokenizer, ditVersion, opts, !opts.gpu, opts.vramBudget);
  }

  async *run(req: EditRequest, trace?: Trace): AsyncGenerator<Progress, EditResult> {
    const g = this.gpu;
    const t2i = !req.image;
    const task = t2i ? 't2i' : 'edit';
    const steps = req.steps ?? 28, cfg = req.cfg ?? 6.0, seed = req.seed ?? 42, size = req.size ?? 512;
    const negative = req.negative ?? (t2i ? T2I_NEGATIVE_PROMPT : '');
    const beh = officialBehaviour(req.compat ?? 'current', req.cfgTruncate);
    checkVersion(this.files.dit, this.ditVersion, req.version); // before any stage runs
    if (this.ditVersion === 'v1.2')
      return yield* runV12Request({ gpu: g, files: this.files, tokenizer: this.tokenizer, models: this.models, opts: this.opts, fullBudget: this.fullBudget, stage: (s) => this.stage(s) }, req);
    if (req.reason) throw new Step1xError(`--think / --reflect need a v1.2 model (this one is ${this.ditVersion})`, ExitCode.USAGE);
    const timings: Record<string, number> = {};
    const tStart = performance.now();
    let t0 = tStart;
    const lap = (name: string) => {
      const now = performance.now();
      timings[name] = +((now - t0) / 1000).toFixed(3);
      t0 = now;
    };
    g.pool.resetPeak();
    g.dryrun?.reset();
    const loads0 = { ...this.models.loads }; // the dry run reports this request's model loads
    const emb = this.files.hparams?.embedder ?? {};

    // -- preprocess -------------------------------------------------------------------------------
    yield { stage: 'preprocess', message: t2i ? 'preparing the prompt' : 'resizing the input' };
    const photo = req.image;
    let ref: RgbImage | undefined; // the reference image at the working size (edit)
    let mllmImage: RgbImage; // what Qwen2.5-VL sees
    let outW: number, outH: number;
    if (photo) {
      ref = inputProcessImage(photo, size, beh.inputResize); // [h, w, 3] u8, sides multiples of 16
      trace?.('mid.ref_resized_u8', ref.data, [ref.height, ref.width, 3], 'u8');
      mllmImage = ref;
      outW = ref.width;
      outH = ref.height;
    } else {
      outW = req.width ?? 1024;
      outH = req.height ?? 1024;
      if (!(outW >= 16 && outH >= 16 && outW % 16 === 0 && outH % 16 === 0))
        throw new Step1xError(`text-to-image size ${outW}x${outH}: width and height must be multiples of 16`, ExitCode.USAGE);
      const side = T2I_MLLM_IMAGE_SIDE; // Image.new('RGB', (1024, 1024)): black
      mllmImage = { width: side, height: side, data: new Uint8Array(side * side * 3) };
    }
    const qp = qwenProcessImage(mllmImage, { minPixels: emb.min_pixels ?? STEP1X_MIN_PIXELS, maxPixels: emb.max_pixels ?? STEP1X_MAX_PIXELS });
    trace?.('mid.qwen_fetched_u8', qp.fetched.data, [qp.fetched.height, qp.fetched.width, 3], 'u8');
    trace?.('mid.qwen_resized_u8', qp.resized.data, [qp.resized.height, qp.resized.width, 3], 'u8');
    trace?.('mid.image_grid_thw', Int32Array.from(qp.gridThw), [1, 3], 'i64');
    trace?.('mid.pixel_values', qp.pixelValues, [qp.numPatches, qp.pixelValues.length / qp.numPatches]);
    const prompts = [req.instruction, negative].map((c) => buildStep1xInputIds(this.tokenizer, c, qp.numImageTokens, { maxLength: emb.max_length, dropPrefix: emb.drop_prefix_tokens }));
    (['cond', 'uncond'] as const).forEach((k, i) => {
      trace?.(`mid.input_ids.${k}`, prompts[i].inputIds, [prompts[i].inputIds.length], 'i64');
      trace?.(`mid.attention_mask.${k}`, prompts[i].attentionMask, [prompts[i].attentionMask.length], 'i64');
    });
    const lh = outH / 8, lw = outW / 8;
    if (req.mask && !photo) throw new Step1xError('--mask needs an input image (edit, not generate)', ExitCode.USAGE);
    const mask: Mask | undefined = req.mask && photo ? prepareMask(req.mask, photo.width, photo.height, req.maskFeather ?? 0) : undefined;
    const maskPacked = mask ? packedMask(resizeMask(mask, lw, lh)) : undefined;
    let noise = req.noise;
    if (!noise && req.noisePath) noise = await readNoiseFile(req.noisePath, lh, lw);
    noise ??= initialNoise(seed, lh, lw);
    if (noise.length !== 16 * lh * lw) throw new Step1xError(`noise has ${noise.length} values, this ${task} needs [1, 16, ${lh}, ${lw}]`, ExitCode.USAGE);
    lap('preprocess');

    // One plan (pipeline/plan.ts) decides residency, and the stages follow it: all models at once within
    // the budget (--vram-budget, else the device's memory when known) -> kept across stages and images;
    // otherwise each stage loads its model against the budget less its activations. No budget at all
    // (a real GPU's size is unknown to WebGPU): one model at a time, everything resident. Out of GPU
    // memory anyway: the run re-plans under a smaller budget and follows that (run-plan.ts).
    const run = await RunPlan.make(g, this.files, { width: outW, height: outH, weights: this.opts.weights, loras: this.opts.loras, budget: this.fullBudget, deviceBytes: g.memoryBytes }, this.models);

    // -- embed: Qwen2.5-VL, loaded for this stage only --------------------------------------------
    yield { stage: 'embed', message: 'Qwen2.5-VL: embedding the instruction and the image' };
    await this.stage('embed');
    const report = (stage: Progress['stage']) => (step: number, total: number) => this.opts.onProgress?.({ stage, step, total });
    const embedded = await runEmbed(g, this.files, prompts, qp, { textAttention: beh.textAttention, budget: run.budgetFor('embed'), replan: (what, held) => run.replan('embed', what, held), models: this.models, weights: { weights: this.opts.weights }, maxLength: emb.max_length, drop: emb.drop_prefix_tokens, trace, onInfo: (m) => this.opts.onProgress?.({ stage: 'embed', message: m }), onProgress: report('embed') });
    lap('embed');
    yield { stage: 'embed', done: true, message: `embedded ${prompts.map((p) => p.inputIds.length).join(' + ')} tokens (${timings.embed}s)` };

    // -- encode the reference ---------------------------------------------------------------------
    let refLatent: Float32Array | undefined;
    if (ref) {
      yield { stage: 'encode', message: 'VAE: encoding the reference image' };
      await this.stage('encode');
      refLatent = await runVaeEncode(g, this.files, ref, { sampleSeed: req.sampleEncode ? seed : undefined, trace, onProgress: report('encode'), models: this.models });
      lap('encode');
    }

    // -- sample -----------------------------------------------------------------------------------
    // The denoise loop reports through a callback; relay its events as they happen.
    const queue: Progress[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    let skipped = 0;
    let version: DitVersion = this.ditVersion;
    await this.stage('sample');
    const sampling = runDenoise(g, this.files, {
      noise, refLatent, lh, lw, llmEmbedding: embedded.embeddings, mask: embedded.mask, T: embedded.maxLength, steps, cfg,
      cfgTruncate: beh.cfgTruncate, version: req.version,
      budget: run.budgetFor('sample'), replan: (what, held) => run.replan('sample', what, held), models: this.models, weights: { weights: this.opts.weights, loras: this.opts.loras }, trace, cache: req.cache, maskPacked,
      onVersion: (v) => (version = v),
      onInfo: (m) => this.opts.onProgress?.({ stage: 'sample', message: m }),
      onStep: (i, n, sk) => {
        if (sk) skipped++;
        queue.push({ stage: 'sample', step: i, total: n, skipped: req.cache ? skipped : undefined });
        wake?.();
      },
    }).finally(() => {
      finished = true;
      wake?.();
    });
    yield { stage: 'sample', step: 0, total: steps };
    while (!finished || queue.length) {
      if (queue.length) yield queue.shift()!;
      else await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    const latent = await sampling;
    lap('sample');
    const cacheNote = req.cache ? `, TeaCache skipped ${skipped} of ${steps}` : '';
    yield { stage: 'sample', done: true, message: `sampled ${steps} step${steps === 1 ? '' : 's'} at ${outW}×${outH} (${timings.sample}s${cacheNote})` };

    // -- decode -----------------------------------------------------------------------------------
    yield { stage: 'decode', message: 'VAE: decoding' };
    await this.stage('decode');
    const small = await runVaeDecode(g, this.files, latent, lh, lw, trace, report('decode'), this.models);
    lap('decode');
    g.mark('postprocess');

    // -- postprocess: resize back (PIL bicubic) unless the user keeps the working size --------------
    // (t2i: output_process_image resizes to width × height, the size it decoded at: nothing to do)
    let out = !photo || req.nativeSize || (small.width === photo.width && small.height === photo.height) ? small : resize(small, photo.width, photo.height, 'bicubic');
    // outside the mask the written image is the input's own pixels (the working image with --native-size)
    if (mask && photo && ref) out = out.width === photo.width && out.height === photo.height ? compositeImage(out, photo, mask) : compositeImage(out, ref, resizeMask(mask, out.width, out.height));
    trace?.('out.rgb_u8', out.data, [out.height, out.width, 3], 'u8');
    lap('postprocess');
    timings.total = +((performance.now() - tStart) / 1000).toFixed(3);
    const parameters: Record<string, string> = {
      task,
      instruction: req.instruction,
      negative,
      seed: req.noise || req.noisePath ? `${seed} (noise from ${req.noisePath ?? 'caller'})` : String(seed),
      steps: String(steps),
      cfg: String(cfg),
      'cfg-truncate': String(beh.cfgTruncate),
      'dit-version': version,
      compat: beh.compat,
    };
    if (photo) {
      parameters.size = String(size);
      parameters['working-size'] = `${outW}x${outH}`;
      parameters['input-resize'] = beh.inputResize;
      parameters['vae-encode'] = req.sampleEncode ? 'sample' : 'mean';
    } else parameters['output-size'] = `${outW}x${outH}`;
    parameters['text-attention'] = beh.textAttention;
    parameters.models = [this.files.dit, this.files.vae, this.files.qwenDir].map((p) => p.split(/[\\/]/).pop()).join(', ');
    if (req.mask) parameters.mask = `${req.mask.width}x${req.mask.height}${req.maskFeather ? `, feather ${req.maskFeather}px` : ''}`;
    if (req.cache) parameters.cache = `teacache:${req.cache.threshold} (skipped ${skipped} of ${steps} steps)`;
    const cacheInfo = req.cache ? { cache: { kind: 'teacache' as const, threshold: req.cache.threshold, skippedSteps: skipped } } : {};
    const dry = g.dryrun ? { dryrun: { ...g.dryrun.report(), model_loads: loadsSince(this.models, loads0) } } : {};
    return { image: out, task, version, behaviour: beh, workingSize: [outW, outH], seed, timings, peakGpuBytes: g.pool.peakLiveBytes, parameters, ...cacheInfo, ...dry };
  }

  /**
   * A stage begins: the pool's cached free buffers of the last one go (each stage allocates its own,
   * once, and reuses them: runtime/buffer-pool.ts), and the GPU finishes the last stage's work, so the
   * memory of the model it freed is back before this one allocates (Dawn frees a destroyed buffer only
   * after the submits that used it). The dry run counts from here.
   */
  private async stage(name: 'reason' | 'embed' | 'encode' | 'sample' | 'decode'): Promise<void> {
    this.gpu.pool.trim();
    await this.gpu.sync();
    this.gpu.mark(name);
  }

  /** Convenience: run to completion, forwarding progress to a callback. */
  async edit(req: EditRequest, onProgress?: (p: Progress) => void, trace?: Trace): Promise<EditResult> {
    const it = this.run(req, trace);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
      onProgress?.(r.value);
    }
  }

  /** Free the resident models (and the GPU when this pipeline created it). */
  async close(): Promise<void> {
    await this.models.releaseAll();
    this.dispose();
  }

  dispose(): void {
    void this.models.releaseAll();
    if (this.ownsGpu) this.gpu.destroy();
  }
}

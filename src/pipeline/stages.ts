/**
 * The model stages of an edit, each loading its model, running it, and freeing it before returning.
 * Each loads under the budget the run's plan gives it (pipeline/run-plan.ts); when the device runs out of
 * memory anyway, the run re-plans under a smaller budget and the stage is retried once under the new plan. Host arrays go in and
 * out, so the GPU holds at most one model at a time.
 *
 * `Trace` receives intermediates under the golden `e2e` names (mid.*, out.*); golden kinds and
 * `step1x golden` use it, the CLI passes none.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { ExitCode, GpuOutOfMemory, Step1xError } from '../errors.js';
import type { ModelFiles } from '../io/model-files.js';
import type { RgbImage } from '../io/resize.js';
import { AutoEncoder, type AeConfig } from '../models/vae.js';
import { Step1XEdit } from '../models/dit.js';
import { QwenVL } from '../models/qwen25vl/model.js';
import { embedPrompts, type EmbedderOutput } from '../models/qwen25vl/embedder.js';
import type { QwenProcessed } from '../models/qwen25vl/processor.js';
import type { TextAttention } from '../models/qwen25vl/text.js';
import type { DitVersion } from '../models/dit-config.js';
import type { Step1xPrompt } from '../models/qwen25vl/prompt.js';
import { getSchedule, denoise } from './sampling.js';
import { prepare, prepareT2i, imageSeqLen, unpack2x2Host } from './prepare.js';
import { posteriorEps } from './rng.js';
import type { WeightPolicy } from '../nn/weight.js';
import { ModelHost } from './model-host.js';
import { TeaCache, type CacheOption } from './teacache.js';
import { blendLatent } from './mask.js';

export type Trace = (name: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind?: 'f32' | 'i64' | 'u8') => void;

/**
 * Test seam: the next `residentLoads` stage loads with every weight resident (no budget) fail as GPU
 * out-of-memory after `heldBytes` allocated, as a failed allocation would; tests of the re-plan set it,
 * nothing else does.
 */
export const oomInjection = { residentLoads: 0, heldBytes: 0 };

/** A stage's re-plan after GPU out-of-memory (pipeline/run-plan.ts RunPlan.replan, bound to the stage). */
export type Replan = (what: string, heldBytes: number) => Promise<{ budget: number | undefined; note: string }>;

/**
 * Run `stage(budget)`; when the device refuses an allocation (GpuOutOfMemory), free everything, re-plan
 * under a budget below the bytes held when it failed (the attempt's peak plus the pool's cache), say so,
 * and run the stage once more under the new plan's budget. Without `replan` (a stage run outside a
 * pipeline: golden kinds) the error stands.
 */
export async function withOomFallback<T>(g: Gpu, what: string, budget: number | undefined, stage: (budget: number | undefined) => Promise<T>, replan?: Replan, info?: (m: string) => void): Promise<T> {
  const peak = g.pool.peakLiveBytes;
  g.pool.resetPeak(); // this attempt's high-water mark: what the device held when it failed
  let injected = false;
  try {
    if (budget === undefined && oomInjection.residentLoads > 0) {
      oomInjection.residentLoads--;
      injected = true;
      throw new GpuOutOfMemory(`${what}: out of GPU memory (injected by a test)`);
    }
    return await stage(budget);
  } catch (e) {
    if (!(e instanceof GpuOutOfMemory) || !replan) throw e;
    const held = injected ? oomInjection.heldBytes : g.pool.peakLiveBytes + g.pool.cachedBytes;
    g.pool.trim();
    g.flush();
    const next = await replan(what, held);
    info?.(next.note);
    return stage(next.budget);
  } finally {
    g.pool.peakLiveBytes = Math.max(peak, g.pool.peakLiveBytes);
  }
}

export interface EmbedOptions {
  /** Masked text tokens' own rows: 'sdpa' (current official) or 'flash' (May 2025). */
  textAttention?: TextAttention;
  budget?: number;
  /** Re-plan on GPU out-of-memory (withOomFallback). */
  replan?: Replan;
  /** Keeps models resident across stages and images when the plan says they fit (model-host.ts). */
  models?: ModelHost;
  /** How Linear weights load (`--weights`). */
  weights?: WeightPolicy;
  maxLength?: number;
  drop?: number;
  trace?: Trace;
  onInfo?: (m: string) => void;
  /** Decoder layers done (over both prompts) of the total. */
  onProgress?: (done: number, total: number) => void;
}

/** VAE tap that reports levels done: encode down levels then mid, decode mid then up levels (L + 1 in all). */
function vaeProgressTap(levels: number, onProgress?: (done: number, total: number) => void): ((name: string) => Promise<void>) | undefined {
  if (!onProgress) return undefined;
  return async (name: string) => {
    let m: RegExpExecArray | null;
    if ((m = /^enc\.down(\d+)\.blocks$/.exec(name))) onProgress(+m[1] + 1, levels + 1);
    else if (name === 'enc.mid.block_2') onProgress(levels + 1, levels + 1);
    else if (name === 'dec.mid.block_2') onProgress(1, levels + 1);
    else if ((m = /^dec\.up(\d+)\.blocks$/.exec(name))) onProgress(1 + levels - +m[1], levels + 1);
  };
}

/** Qwen2.5-VL over the prompts (cond, uncond) with the same image → llm_embedding [B, maxLength, D], mask. */
export async function runEmbed(g: Gpu, files: ModelFiles, prompts: Step1xPrompt[], qp: QwenProcessed, o: EmbedOptions = {}): Promise<EmbedderOutput> {
  const inputs = prompts.map((p) => ({ inputIds: p.inputIds, attentionMask: p.attentionMask, pixelValues: qp.pixelValues, gridThw: [qp.gridThw] as [number, number, number][], textAttention: o.textAttention }));
  return withOomFallback(g, 'Qwen2.5-VL', o.budget, async (budget) => {
    const load = () => QwenVL.load(g, files.qwenDir, { ...(budget !== undefined ? { gpuBudgetBytes: budget } : {}), policy: o.weights });
    const close = async (m: QwenVL) => {
      await m.dispose();
      g.pool.trim();
    };
    return (o.models ?? new ModelHost()).use('qwen', `${files.qwenDir}|${o.weights?.weights}`, load, close, async (model) => {
      if (model.streamed.text || model.streamed.vision) o.onInfo?.(`Qwen2.5-VL: streaming ${model.streamed.text ? 'text' : ''}${model.streamed.text && model.streamed.vision ? ' and ' : ''}${model.streamed.vision ? 'vision' : ''} layers from disk under the GPU budget`);
      const names = ['cond', 'uncond'];
      const out = await embedPrompts(g, model, inputs, {
        maxLength: o.maxLength,
        dropPrefixTokens: o.drop,
        trace: {
          ...(o.trace ? { visionOut: async (t: Tensor) => o.trace!('mid.vision_out', await g.readF32(t), [...t.shape].slice(-2)) } : {}),
          ...(o.onProgress ? { layer: async (i: number, _t: Tensor, s: number) => void (s === inputs.length - 1 && o.onProgress!(i + 1, model.cfg.text.numHiddenLayers)) } : {}),
        },
        onFinalNorm: o.trace ? (b, data, L) => o.trace!(`mid.llm_last_hidden.${names[b] ?? b}`, data, [L, data.length / L]) : undefined,
      });
      o.trace?.('mid.llm_embedding', out.embeddings, [out.batch, out.maxLength, out.hidden]);
      o.trace?.('mid.mask', out.mask, [out.batch, out.maxLength], 'i64');
      return out;
    });
  }, o.replan, o.onInfo);
}

/** to_tensor(img)·2 − 1 as [1, 3, H, W] f32 (u8/255 in f32, then ×2 − 1 in f32 like torch). */
export function imageToModelInput(img: RgbImage): Float32Array {
  const { width: W, height: H, data } = img;
  const out = new Float32Array(3 * H * W);
  const f = Math.fround;
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < H * W; i++) out[c * H * W + i] = f(f(f(data[i * 3 + c] / 255) * 2) - 1);
  return out;
}

/** decoded [1, 3, H, W] → clamp(−1, 1)·0.5 + 0.5 → to_pil_image (truncating ×255) → RGB u8. */
export function modelOutputToImage(x: Float32Array, H: number, W: number): RgbImage {
  const data = new Uint8Array(H * W * 3);
  const f = Math.fround;
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < H * W; i++) {
      const v = Math.min(1, Math.max(-1, x[c * H * W + i]));
      const u = f(f(v * 0.5) + 0.5);
      data[i * 3 + c] = Math.min(255, Math.max(0, Math.trunc(f(u * 255))));
    }
  return { width: W, height: H, data };
}

function aeBase(files: ModelFiles): Partial<AeConfig> {
  return (files.hparams?.ae ?? {}) as Partial<AeConfig>;
}

/** VAE encode of the reference → ref latent [1, 16, h/8, w/8] (mean path, or sampled with a seed). */
export async function runVaeEncode(g: Gpu, files: ModelFiles, ref: RgbImage, o: { /** the edit's seed: ε = posteriorEps(seed) */ sampleSeed?: number; eps?: Float32Array; trace?: Trace; models?: ModelHost; onProgress?: (done: number, total: number) => void } = {}): Promise<Float32Array> {
  return withVae(g, files, o.models, (vae) => vaeEncode(g, vae, ref, o));
}

/** The VAE of `files` for `fn`: kept by `models` in keep mode, else loaded and freed around it. */
function withVae<R>(g: Gpu, files: ModelFiles, models: ModelHost | undefined, fn: (vae: AutoEncoder) => Promise<R>): Promise<R> {
  return hostVae(g, models, files.vae, () => AutoEncoder.load(g, files.vae, aeBase(files)), fn);
}

/** The VAE at `path` (either layout) for `fn`: kept by `models` in keep mode, else loaded and freed around it. */
export function hostVae<R>(g: Gpu, models: ModelHost | undefined, path: string, load: () => Promise<AutoEncoder>, fn: (vae: AutoEncoder) => Promise<R>): Promise<R> {
  const close = (vae: AutoEncoder) => {
    vae.dispose();
    g.pool.trim();
  };
  return (models ?? new ModelHost()).use('vae', path, load, close, fn);
}

/**
 * Host pixels [1, 3, h, w] → VAE encoder → host latent [1, 16, h/8, w/8] (posterior mean, or sampled with
 * `eps`); `trace` gets the moments and the latent as `name`. The GPU tensors live in one scope.
 */
export function encodeLatent(g: Gpu, vae: AutoEncoder, pixels: Float32Array, h: number, w: number, o: { eps?: Float32Array; tap?: (name: string) => Promise<void>; trace?: Trace; name: string }): Promise<Float32Array> {
  return g.scopeAsync(async () => {
    const r = await vae.encode(g.upload(pixels, [1, 3, h, w]), { ...(o.eps ? { sample: o.eps } : {}), ...(o.tap ? { tap: o.tap } : {}) });
    o.trace?.('mid.ref_moments', await g.readF32(r.moments), [...r.moments.shape]);
    const latent = await g.readF32(r.latent);
    o.trace?.(o.name, latent, [...r.latent.shape]);
    return latent;
  });
}

async function vaeEncode(g: Gpu, vae: AutoEncoder, ref: RgbImage, o: { sampleSeed?: number; eps?: Float32Array; trace?: Trace; onProgress?: (done: number, total: number) => void }): Promise<Float32Array> {
  const zc = vae.config.z_channels, lh = ref.height / 8, lw = ref.width / 8;
  const eps = o.eps ?? (o.sampleSeed !== undefined ? posteriorEps(o.sampleSeed, lh, lw, zc) : undefined);
  const tap = vaeProgressTap(vae.config.ch_mult.length, o.onProgress);
  return encodeLatent(g, vae, imageToModelInput(ref), ref.height, ref.width, { eps, tap, trace: o.trace, name: eps ? 'mid.ref_latent_sampled' : 'mid.ref_latent' });
}

export interface DenoiseStageOptions {
  noise: Float32Array; // [1, 16, lh, lw]
  /** [1, 16, lh, lw]; absent for text-to-image (noise tokens alone, `prepare_t2i` / `denoise_t2i`). */
  refLatent?: Float32Array;
  lh: number;
  lw: number;
  llmEmbedding: Float32Array; // [2, T, Cllm]
  mask: Int32Array | Float32Array; // [2, T]
  T: number;
  steps: number;
  cfg: number;
  /** `timesteps_truncate` (current official 0.93; 1 = plain CFG throughout). */
  cfgTruncate: number;
  /** `--version`: must agree with the weights (which tell it anyway). */
  version?: DitVersion;
  budget?: number;
  /** Re-plan on GPU out-of-memory (withOomFallback). */
  replan?: Replan;
  models?: ModelHost;
  /** How Linear weights load (`--weights`, `--lora`). */
  weights?: WeightPolicy;
  trace?: Trace;
  /** TeaCache (`--cache teacache[:T]`); `skipped` in onStep says whether that step reused the cache. */
  cache?: CacheOption;
  /** Region mask on the packed noisy half [N·64] (src/pipeline/mask.ts): blended after every step. */
  maskPacked?: Float32Array;
  onStep?: (done: number, total: number, skipped?: boolean) => void;
  onInfo?: (m: string) => void;
  /** The version the weights told, once the DiT is open. */
  onVersion?: (v: DitVersion) => void;
}

/** Load the DiT + connector and run the official denoise loop → packed latent [1, N, 64]. */
export async function runDenoise(g: Gpu, files: ModelFiles, o: DenoiseStageOptions): Promise<Float32Array> {
  const B = 2;
  const timesteps = getSchedule(o.steps, imageSeqLen(o.lh, o.lw));
  o.trace?.('mid.timesteps', timesteps, [timesteps.length]);
  const mask = Float32Array.from(o.mask);
  return withOomFallback(g, 'DiT', o.budget, async (budget) => {
    const open = () => Step1XEdit.open(g, files.dit, { ...(files.hparams ?? {}), version: o.version }, { ...(budget !== undefined ? { budgetBytes: budget } : {}), weights: o.weights });
    const key = `${files.dit}|${o.version}|${o.weights?.weights}|${(o.weights?.loras ?? []).map((l) => `${l.path}:${l.multiplier}`).join(',')}`;
    return (o.models ?? new ModelHost()).use('dit', key, open, async (m) => {
      await m.close();
      g.pool.trim();
    }, async (model) => {
      o.onVersion?.(model.version);
      if (model.streamedBlocks) o.onInfo?.(`DiT: streaming ${model.streamedBlocks} blocks from disk under the GPU budget`);
      // the reference tokens' ids depend on the version the weights tell (prepare.ts)
      const prep = o.refLatent ? prepare(o.noise, o.refLatent, [1, 16, o.lh, o.lw], B, o.T, model.version) : prepareT2i(o.noise, [1, 16, o.lh, o.lw], B, o.T);
      const L = prep.img.length / B / prep.channels;
      const N = prep.reference ? L / 2 : L;
      o.trace?.('mid.img', prep.img, [B, L, prep.channels]);
      o.trace?.('mid.img_ids', prep.imgIds, [B, L, 3]);
      o.trace?.('mid.txt_ids', prep.txtIds, [B, o.T, 3]);
      if (o.maskPacked && !prep.reference) throw new Step1xError('a region mask needs a reference image (edit, not generate)', ExitCode.USAGE);
      const cache = o.cache ? new TeaCache(o.steps, o.cache.threshold) : undefined;
      const pred = model.predictor({ llmEmbedding: o.llmEmbedding, mask, imgIds: prep.imgIds, txtIds: prep.txtIds, T: o.T, L, cache });
      try {
        g.mark('sample', 1);
        const out = await denoise(pred, prep.img, B, {
          timesteps,
          cfgGuidance: o.cfg,
          timestepsTruncate: o.cfgTruncate,
          reference: prep.reference,
          channels: prep.channels,
          afterStep: o.maskPacked ? (x, tNext) => blendLatent(x, o.maskPacked!, prep.img.subarray(0, N * prep.channels), prep.img.subarray(N * prep.channels, 2 * N * prep.channels), tNext) : undefined,
          onStep: (s) => {
            o.trace?.(`mid.step${s.step}.t_vec`, new Float32Array(B).fill(s.tCurr), [B]);
            o.trace?.(`mid.step${s.step}.pred_raw`, s.predRaw, [B, L, prep.channels]);
            // all tokens, as the May 2025 loop guided them (the current one guides the first N only: same values)
            o.trace?.(`mid.step${s.step}.pred_guided`, s.predGuided, [1, L, prep.channels]);
            o.trace?.(`mid.step${s.step}.latent_after`, s.latentAfter, [1, L, prep.channels]);
            o.onStep?.(s.step + 1, s.total, pred.cacheState?.skipped);
            g.mark('sample', s.step + 1 < s.total ? s.step + 2 : undefined);
          },
        });
        o.trace?.('mid.latent_packed', out, [1, N, prep.channels]);
        return out;
      } finally {
        pred.dispose();
      }
    });
  }, o.replan, o.onInfo);
}

/** Unpack [1, N, 64] → latent [1, 16, lh, lw], VAE decode, clamp, truncate to u8. */
export async function runVaeDecode(g: Gpu, files: ModelFiles, packed: Float32Array, lh: number, lw: number, trace?: Trace, onProgress?: (done: number, total: number) => void, models?: ModelHost): Promise<RgbImage> {
  const latent = unpack2x2Host(packed, 1, 16, lh / 2, lw / 2);
  trace?.('mid.latent', latent, [1, 16, lh, lw]);
  return withVae(g, files, models, (vae) => vaeDecode(g, vae, latent, lh, lw, trace, onProgress));
}

async function vaeDecode(g: Gpu, vae: AutoEncoder, latent: Float32Array, lh: number, lw: number, trace?: Trace, onProgress?: (done: number, total: number) => void): Promise<RgbImage> {
  // the latent and the decoded image on the GPU live in this scope
  const x = await g.scopeAsync(async () => {
    const dec = await vae.decode(g.upload(latent, [1, 16, lh, lw]), vaeProgressTap(vae.config.ch_mult.length, onProgress));
    return { data: await g.readF32(dec), H: dec.shape[2], W: dec.shape[3] };
  });
  trace?.('mid.decoded', x.data, [1, 3, x.H, x.W]);
  const img = modelOutputToImage(x.data, x.H, x.W);
  trace?.('out.rgb_small_u8', img.data, [x.H, x.W, 3], 'u8');
  return img;
}

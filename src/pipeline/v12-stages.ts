/**
 * The stages of the v1.2 edit (pipeline/v12-edit.ts), shaped like the v1.0/v1.1 ones (stages.ts): each takes
 * its model from a ModelHost (kept across stages and images when the plan fits them all, else loaded and
 * freed per stage) under the budget the one plan gives it (plan.ts stageBudget), and is retried once under
 * a new plan on GPU out-of-memory (run-plan.ts). Host arrays go in and out. The text encoder is hosted under
 * one key (hostV12Qwen) for the embed stage and the reasoning edit's thinker alike (v12-run.ts).
 *   embed   Qwen2.5-VL over [prompt, ""] at their own lengths (no attention mask, M-RoPE from ids > 0),
 *           vision once → kept span, text embeddings (embed_tokens rows, vision features on image tokens), txt_ids
 *   encode  bilinear AA of the original photo → VAE posterior sampled with ε
 *   sample  per side (B = 1: the two spans differ in length) text_token_mapping, the connector's constants and
 *           the rope table once, then the DiT at every step with the CFG rescale (v12-sampling.ts); TeaCache
 *           decides on the prompt's row and the "" row follows it
 *   decode  latents / scaling + shift → VAE decoder → round(255 · clamp(x/2 + 0.5))
 * `emit` receives the intermediates under the golden names (v12_e2e_tiny); without it nothing is read back
 * for tracing.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { RgbImage } from '../io/resize.js';
import { resizeTorchF32Bilinear } from '../io/resize-torch-f32.js';
import type { DiffusersModelDir } from '../io/diffusers-layout.js';
import { ExitCode, fail } from '../errors.js';
import { QwenVL } from '../models/qwen25vl/model.js';
import { QwenGenerator } from '../models/qwen25vl/generate.js';
import { gatherEmbeddingRows } from '../models/qwen25vl/loader.js';
import type { V12Prompt } from '../models/qwen25vl/prompt-v12.js';
import { Step1XEdit, type BlockCache, type BlockCacheState, type PreparedText, type RopePe } from '../models/dit.js';
import { AutoEncoder } from '../models/vae.js';
import type { WeightsOption } from '../nn/weight.js';
import type { LoraFile } from '../nn/lora.js';
import { v12TextIds } from './v12-ids.js';
import { v12Denoise as denoiseLoop, v12Schedule } from './v12-sampling.js';
import { imageIds, referenceIds } from './prepare.js';
import { ModelHost } from './model-host.js';
import { encodeLatent, hostVae, withOomFallback, type Replan } from './stages.js';
import { TeaCache, type CacheOption } from './teacache.js';
import { blendLatent } from './mask.js';
import { withF16Redo } from '../ops/act-dtype.js';

const fr = Math.fround;

export type V12Emit = (name: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind?: 'f32' | 'i64' | 'u8') => void;
type Side = 'cond' | 'uncond';
const SIDES: readonly Side[] = ['cond', 'uncond'];

export interface V12StageOptions {
  /** Where the stages get their models (keep mode from the plan); a fresh one loads and frees per stage. */
  models?: ModelHost;
  /** The plan's loader budgets (plan.ts stageBudget); undefined: resident. */
  budget?: { embed?: number; sample?: number };
  /** Re-plan on GPU out-of-memory (stages.ts withOomFallback; pipeline/run-plan.ts). */
  replan?: { embed?: Replan; sample?: Replan };
  /** `--weights` for the DiT's and Qwen's Linear layers. */
  weights?: WeightsOption;
  /** `--lora`, merged into the DiT under its official names (the diffusers transformer is opened under them). */
  loras?: readonly LoraFile[];
  cache?: CacheOption;
  /** Region mask on the packed noise tokens [N·64] (pipeline/mask.ts), blended after every step. */
  maskPacked?: Float32Array;
  /** A stage begins (EditPipeline: pool trim, GPU sync, dry-run mark). */
  onStage?: (stage: 'embed' | 'encode' | 'sample' | 'decode') => Promise<void>;
  onInfo?: (stage: 'reason' | 'embed' | 'sample', message: string) => void;
  /** Qwen layers done; sampling steps done (and TeaCache's skipped steps). */
  onProgress?: (stage: 'embed' | 'sample', done: number, total: number, skipped?: number) => void;
}

/** One side's conditioning: the kept span's hidden states and text embeddings [T, D], text_mask, txt_ids [T, 3]. */
export interface V12Side {
  emb: Float32Array;
  text: Float32Array;
  mask: Int32Array;
  ids: Float32Array;
  T: number;
}

export const qwenStreamNote = (m: QwenVL) => `Qwen2.5-VL: streaming ${m.streamed.text ? 'text' : ''}${m.streamed.text && m.streamed.vision ? ' and ' : ''}${m.streamed.vision ? 'vision' : ''} layers from disk under the GPU budget`;

/** The hosted v1.2 text encoder, and the thinker's generator on it once the thinker has called (freed with it). */
export interface HostedQwen {
  qwen: QwenVL;
  gen?: QwenGenerator;
}

/** The thinker's generator of a hosted Qwen: its lm_head loaded (under the model's --weights) on first use. */
export async function generatorOf(g: Gpu, h: HostedQwen): Promise<QwenGenerator> {
  return (h.gen ??= await QwenGenerator.create(g, h.qwen));
}

/**
 * The v1.2 text encoder for `fn`, from the model host under the one key its two users share (files,
 * --weights and the plan's loader budget, plan.ts stageBudget: the same for both): the embed stage and the
 * thinker (v12-run.ts) get the same loaded model. `hold`: it stays loaded after `fn` in per-stage mode too,
 * until a stage of another model needs the room (model-host.ts).
 */
export function hostV12Qwen<R>(g: Gpu, d: DiffusersModelDir, o: Pick<V12StageOptions, 'models' | 'weights'>, budget: number | undefined, fn: (h: HostedQwen) => Promise<R>, hold = false): Promise<R> {
  const load = async (): Promise<HostedQwen> => ({ qwen: await QwenVL.load(g, d.textEncoderDir, { ...(budget !== undefined ? { gpuBudgetBytes: budget } : {}), policy: { weights: o.weights } }) });
  const close = async (h: HostedQwen) => {
    h.gen?.dispose();
    await h.qwen.dispose();
    g.pool.trim();
  };
  return (o.models ?? new ModelHost()).use('qwen', `${d.textEncoderDir}|${o.weights}|${budget ?? 'resident'}`, load, close, fn, { hold });
}

/** Qwen2.5-VL over both prompts with the same image (vision once) → each side's conditioning. */
export async function v12Embed(g: Gpu, d: DiffusersModelDir, prompts: Record<Side, V12Prompt>, pixelValues: Float32Array, gridThw: [number, number, number], refWh: [number, number], resizedWh: [number, number], o: V12StageOptions, emit?: V12Emit): Promise<Record<Side, V12Side>> {
  const e: V12Emit = emit ?? (() => undefined);
  return withOomFallback(g, 'Qwen2.5-VL', o.budget?.embed, async (budget) => {
    return hostV12Qwen(g, d, o, budget, async ({ qwen }) => {
      if (qwen.streamed.text || qwen.streamed.vision) o.onInfo?.('embed', qwenStreamNote(qwen));
      const D = qwen.cfg.text.hiddenSize, layers = qwen.cfg.text.numHiddenLayers;
      const inputs = SIDES.map((side) => {
        const p = prompts[side], L = p.inputIds.length;
        const ropeMask = Int32Array.from(p.inputIds, (v) => (v > 0 ? 1 : 0)); // what get_rope_index sees; the LLM runs unmasked
        e(`mid.input_ids.${side}`, p.inputIds, [L], 'i64');
        e(`mid.attention_mask.${side}`, ropeMask, [L], 'i64');
        return { inputIds: p.inputIds, pixelValues, gridThw: [gridThw], ropeMask };
      });
      const pos: { ids: Int32Array; delta: number }[] = [];
      let visionOut: Float32Array | undefined;
      // the final hidden states on the GPU live in this scope
      const lasts = await g.scopeAsync(async () => {
        const hs = await qwen.forward(g, inputs, {
          positions: async (ids, delta) => void pos.push({ ids, delta }),
          visionOut: async (t) => void (visionOut = await g.readF32(t)),
          ...(o.onProgress ? { layer: async (i: number, _h: unknown, s: number) => void (s === SIDES.length - 1 && o.onProgress!('embed', i + 1, layers)) } : {}),
        });
        const out: Float32Array[] = [];
        for (const t of hs) out.push(await g.readF32(t));
        return out;
      });
      if (pos.length !== SIDES.length || !visionOut) fail('v1.2 edit: the Qwen forward reported no position ids or vision features', ExitCode.GPU);
      const sides = {} as Record<Side, V12Side>;
      for (const [k, side] of SIDES.entries()) {
        const p = prompts[side], L = p.inputIds.length, last = lasts[k];
        e(`mid.position_ids.${side}`, pos[k].ids, [3, L], 'i64');
        e(`mid.rope_deltas.${side}`, Int32Array.of(pos[k].delta), [1], 'i64');
        e(`mid.last_hidden.${side}`, last, [L, D]);
        const T = p.keepLen, kept = p.inputIds.subarray(p.keepStart, p.keepStart + T);
        const emb = last.slice(p.keepStart * D, (p.keepStart + T) * D);
        const vmask = Int32Array.from(kept, (id) => (id === qwen.cfg.imageTokenId ? 1 : 0));
        const text = await gatherEmbeddingRows(qwen.ckpt, kept);
        let v = 0;
        for (let r = 0; r < T; r++) if (vmask[r]) text.set(visionOut.subarray(v * D, ++v * D), r * D);
        const tmask = p.textMask.slice(p.keepStart, p.keepStart + T);
        const tid = v12TextIds(pos[k].ids, L, p.keepStart, T, vmask, refWh, resizedWh);
        const [rw, rh] = resizedWh, [sw, sh] = refWh;
        e(`mid.prompt_embeds.${side}`, emb, [T, D]);
        e(`mid.prompt_mask.${side}`, new Int32Array(T).fill(1), [T], 'i64');
        e(`mid.text_embeds.${side}`, text, [T, D]);
        e(`mid.text_mask.${side}`, tmask, [T], 'i64');
        e(`mid.vision_mask.${side}`, vmask, [T], 'i64');
        e(`mid.vision_tokens_thw.${side}`, Int32Array.from(gridThw, (x) => Math.floor(x / 2)), [3], 'i64');
        e(`mid.pos_kept_shifted.${side}`, tid.posKeptShifted, [T, 3]);
        e(`mid.txt_ids.${side}`, tid.txtIds, [T, 3]);
        // source pixel → vision token (the fork's _get_affine_mat_from_source): x_tok = x (Rw − 1)/(Sw − 1)/28 − 13.5/28
        e(`mid.vision_affine_mat.${side}`, Float32Array.of((rw - 1) / (sw - 1) / 28, 0, -13.5 / 28, 0, (rh - 1) / (sh - 1) / 28, -13.5 / 28, 0, 0, 1), [3, 3]);
        sides[side] = { emb, text, mask: tmask, ids: tid.txtIds, T };
      }
      e('mid.vision_out', visionOut, [visionOut.length / D, D]);
      return sides;
    });
  }, o.replan?.embed, (m) => o.onInfo?.('embed', m));
}

/** The VAE of `d` for `fn`: kept by `models` in keep mode, else loaded and freed around it. */
function withVae<R>(g: Gpu, d: DiffusersModelDir, models: ModelHost | undefined, fn: (vae: AutoEncoder) => Promise<R>): Promise<R> {
  return hostVae(g, models, d.vaeDir, () => AutoEncoder.load(g, d.vaeDir), fn);
}

/** The reference latent [1, 16, h/8, w/8]: bilinear AA of the ORIGINAL photo to w × h, posterior sampled with `eps`. */
export async function v12Encode(g: Gpu, d: DiffusersModelDir, photo: RgbImage, w: number, h: number, eps: Float32Array, o: V12StageOptions, emit?: V12Emit): Promise<Float32Array> {
  const n = photo.width * photo.height, planes = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) for (let q = 0; q < n; q++) planes[c * n + q] = fr(fr(photo.data[q * 3 + c] / 255) * 2 - 1);
  const vin = resizeTorchF32Bilinear(planes, photo.height, photo.width, h, w);
  emit?.('mid.vae_input', vin, [1, 3, h, w]);
  return withVae(g, d, o.models, (vae) => encodeLatent(g, vae, vin, h, w, { eps, trace: emit, name: 'mid.ref_latent' }));
}

export interface V12DenoiseInputs {
  sides: Record<Side, V12Side>;
  /** packed [1, N, 64] */
  refPacked: Float32Array;
  noise: Float32Array;
  lh: number;
  lw: number;
  steps: number;
  cfg: number;
}

interface Prepared {
  add: Float32Array;
  text: PreparedText;
  pe: RopePe;
  cache?: BlockCacheState;
}

/** What the steps shared, held out of any scope: each side's prepared text and TeaCache residual. */
function release(prep: Partial<Record<Side, Prepared>>): void {
  for (const p of Object.values(prep)) {
    p.text.dispose();
    p.cache?.residual?.dispose();
  }
}

/** The denoise loop over the noise tokens with the reference tokens beside them → packed latent [1, N, 64]. */
export async function v12Denoise(g: Gpu, d: DiffusersModelDir, x: V12DenoiseInputs, o: V12StageOptions, emit?: V12Emit): Promise<Float32Array> {
  const N = (x.lh / 2) * (x.lw / 2), Cp = x.noise.length / N, L = 2 * N;
  const imgIds = new Float32Array(L * 3);
  imgIds.set(imageIds(1, x.lh / 2, x.lw / 2));
  imgIds.set(referenceIds(x.lh / 2, x.lw / 2, 'v1.2'), N * 3);
  emit?.('mid.img_ids', imgIds, [L, 3]);
  const sched = v12Schedule(x.steps, N);
  emit?.('mid.sigmas', sched.sigmas, [sched.sigmas.length]);
  emit?.('mid.timesteps', sched.timesteps, [sched.timesteps.length]);
  const weights = o.weights || o.loras?.length ? { weights: o.weights, loras: o.loras } : undefined;
  return withOomFallback(g, 'DiT', o.budget?.sample, async (budget) => {
    const open = () => Step1XEdit.open(g, d.transformerDir, {}, { ...(budget !== undefined ? { budgetBytes: budget } : {}), weights });
    const key = `${d.transformerDir}|v1.2|${o.weights}|${(o.loras ?? []).map((l) => `${l.path}:${l.multiplier}`).join(',')}`;
    const close = async (m: Step1XEdit) => {
      await m.close();
      g.pool.trim();
    };
    return (o.models ?? new ModelHost()).use('dit', key, open, close, async (dit) => {
      if (dit.version !== 'v1.2') fail(`${d.transformerDir}: the weights are ${dit.version}; the v1.2 edit needs text_token_mapping`, ExitCode.WEIGHTS);
      if (dit.streamedBlocks) o.onInfo?.('sample', `DiT: streaming ${dit.streamedBlocks} blocks from disk under the GPU budget`);
      const tea = o.cache ? new TeaCache(x.steps, o.cache.threshold) : undefined;
      let condRan = true;
      const prep: Partial<Record<Side, Prepared>> = {};
      // the rope tables are tensors of this scope; the prepared texts and TeaCache's residuals are held
      // across the steps (out of any scope) and released after the loop
      return g.scopeAsync(async () => {
        try {
          for (const side of SIDES) {
            const s = x.sides[side];
            const policy: BlockCache | undefined = tea && (side === 'cond' ? { decide: (t) => (condRan = tea.decide(t)) } : { decide: () => condRan });
            prep[side] = {
              add: await dit.textTokenMapping(s.text, s.mask, 1, s.T),
              text: await dit.prepareText(s.emb, new Float32Array(s.T).fill(1), 1, s.T),
              pe: dit.ropeFor(s.ids, imgIds, 1, s.T, L).pe,
              ...(policy ? { cache: { policy } } : {}),
            };
          }
          let calls = 0;
          g.mark('sample', 1);
          const taps: Record<string, string> = { 'mid.connector.txt': 'connector_out', 'mid.connector.y': 'pooled', 'mid.context_in': 'context_in' };
          return await denoiseLoop(
            async (side, lat, t) => {
              const s = x.sides[side], p = prep[side]!;
              const first = emit !== undefined && calls++ < 2; // step 0: cond, then uncond
              const img = new Float32Array(L * Cp);
              img.set(lat);
              img.set(x.refPacked, N * Cp);
              const forward = () => dit.forward(
                { img, imgIds, txtIds: s.ids, timesteps: [t], tVec: [t], llmEmbedding: s.emb, mask: new Float32Array(s.T).fill(1), contextAdd: p.add, B: 1, L, T: s.T, pe: p.pe, text: p.text, cache: p.cache },
                first ? async (name, v, shape) => void (taps[name] && emit!(`mid.step0.${taps[name]}.${side}`, v instanceof Float32Array ? v : await g.readF32(v), shape)) : undefined,
              );
              // f16 activation storage where the device can, the step redone in f32 on an f16 overflow
              // (ops/act-dtype.ts), as v1.0 / v1.1 steps; TeaCache's state advances with every forward and the
              // traced first steps emit while they run, so those keep f32 storage
              const host = first || p.cache ? await g.scopeAsync(async () => g.readF32(await forward())) : await withF16Redo(g, 'DiT step', forward);
              if (first) {
                if (side === 'cond') emit!('mid.step0.transformer_timestep', Float32Array.of(t), [1]);
                emit!(`mid.step0.raw_out.${side}`, host, [1, L, Cp]);
                // the fork records text_token_mapping(text_embeds) before text_mask multiplies it
                const raw = await dit.textTokenMapping(s.text, new Int32Array(s.T).fill(1), 1, s.T);
                emit!(`mid.step0.text_token_mapping.${side}`, raw, [1, s.T, raw.length / s.T]);
              }
              return host.slice(0, N * Cp);
            },
            x.noise, sched,
            {
              cfg: x.cfg, channels: Cp,
              afterStep: o.maskPacked ? (lat, sigmaNext) => blendLatent(lat, o.maskPacked!, x.noise, x.refPacked, sigmaNext) : undefined,
              onStep: (st) => {
                emit?.(`mid.step${st.step}.pred_cond`, st.predCond, [1, N, Cp]);
                emit?.(`mid.step${st.step}.pred_uncond`, st.predUncond, [1, N, Cp]);
                emit?.(`mid.step${st.step}.pred_guided`, st.predGuided, [1, N, Cp]);
                emit?.(`mid.step${st.step}.latent_after`, st.latentAfter, [1, N, Cp]);
                o.onProgress?.('sample', st.step + 1, x.steps, tea?.skipped);
                g.mark('sample', st.step + 1 < x.steps ? st.step + 2 : undefined);
              },
            },
          );
        } finally {
          release(prep);
        }
      });
    });
  }, o.replan?.sample, (m) => o.onInfo?.('sample', m));
}

/** Decode the latent [1, 16, lh, lw] → the working-size image, rounded (the fork's postprocess). */
export async function v12Decode(g: Gpu, d: DiffusersModelDir, latent: Float32Array, lh: number, lw: number, o: V12StageOptions, emit?: V12Emit): Promise<RgbImage> {
  return withVae(g, d, o.models, async (vae) => {
    const C = latent.length / (lh * lw), h = lh * 8, w = lw * 8;
    const z = Float32Array.from(latent, (v) => fr(fr(v / fr(vae.config.scale_factor)) + fr(vae.config.shift_factor)));
    emit?.('mid.vae_decode_input', z, [1, C, lh, lw]);
    const decoded = await g.scopeAsync(async () => g.readF32(await vae.decoder.forward(g.upload(z, [1, C, lh, lw]))));
    emit?.('mid.decoded', decoded, [1, 3, h, w]);
    const small = new Uint8Array(h * w * 3);
    for (let c = 0; c < 3; c++) for (let q = 0; q < h * w; q++) small[q * 3 + c] = Math.round(255 * Math.min(1, Math.max(0, fr(fr(decoded[c * h * w + q] / 2) + 0.5))));
    return { width: w, height: h, data: small };
  });
}

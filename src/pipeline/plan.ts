/**
 * The VRAM plan of an edit: for every stage (Qwen2.5-VL embed, VAE encode, DiT sample, VAE decode; before
 * them, for a v1.2 --think / --reflect edit, the thinker's generation on the same Qwen: 'reason') the
 * bytes its model keeps resident, the bytes it streams block by block, the working set of streamed
 * blocks (current + read-ahead), its activation peak, and the stage peak; plus the pool's cache
 * allowance. Read from checkpoint headers only (no GPU): `step1x plan` prints it, the stages use the
 * same activation estimates when they plan their residency, and tests check the measured pool peak
 * never exceeds it.
 *
 * Counting follows the pool (runtime/buffer-pool.ts): every buffer is rounded to its pool bucket, and
 * weights count as the loader will hold them under `--weights` (nn/weight.ts gpuTensorBytes).
 * Activation estimates list the f32 buffers alive at a stage's peak (the biggest block's forward);
 * each list is conservative by construction (tests compare them with measured peaks on tiny models).
 *
 * Residency: when every model fits the budget together (or there is no budget), models stay resident
 * across stages and across the images of a batch (`keepResident`); otherwise each stage loads its model
 * for itself, resident when it fits, else streaming under the budget.
 *
 * This is the one plan the run follows (pipeline/edit-pipeline.ts): the stages hand the loaders
 * `stageBudget()` — the budget less the stage's activations — so the DiT's planResidency and Qwen's
 * residencyPlan decide exactly what is printed here. The pool keeps a stage's freed buffers for reuse
 * until the stage ends (runtime/buffer-pool.ts): those retained buffers are part of each stage's
 * activation bytes, so there is no separate cache share. Without a budget the device's memory is the
 * budget when it is known (the dry run's profile; WebGPU does not tell it on a real device).
 */
import { openDitWeights, openVaeWeights } from '../models/diffusers-map.js';
import { ExitCode, Step1xError } from '../errors.js';
import { configFromCheckpoint, mlpHidden, planResidency, pooledBytes, streamReserve, type DitParams } from '../models/dit-config.js';
import { loadQwenConfig, type QwenVLConfig } from '../models/qwen25vl/config.js';
import { openQwenCheckpoint, residencyPlan } from '../models/qwen25vl/loader.js';
import { QwenVisionTower } from '../models/qwen25vl/vision.js';
import { QwenTextModel } from '../models/qwen25vl/text.js';
import { inferAeConfig, type AeConfig } from '../models/vae-config.js';
import { inputProcessSize, smartResize, STEP1X_MAX_PIXELS } from '../models/qwen25vl/processor.js';
import { V12_DROP_PREFIX } from '../models/qwen25vl/prompt-v12.js';
import { V12_DEFAULTS } from './v12-sampling.js';
import { STEP1X_MAX_LENGTH } from '../models/qwen25vl/embedder.js';
import { EMBED_TOKENS, LM_HEAD } from '../models/qwen25vl/loader.js';
import { THINKER_MAX_NEW_TOKENS, THINKER_MAX_PIXELS } from './reason/thinker.js';
import { gpuTensorBytes, withWeightPolicy, type WeightPolicy, type WeightsOption } from '../nn/weight.js';
import type { LoraFile } from '../nn/lora.js';
import type { ModelFiles } from '../io/model-files.js';

export interface StagePlan {
  stage: 'reason' | 'embed' | 'encode' | 'sample' | 'decode';
  model: 'qwen' | 'vae' | 'dit';
  resident_bytes: number;
  streamed_bytes: number;
  /** Streamed blocks in memory at once (current + read-ahead). */
  working_bytes: number;
  activation_bytes: number;
  peak_bytes: number;
  /** The least this stage needs (everything streamable streamed). */
  min_bytes: number;
  /** What streams: DiT blocks (count), Qwen towers ('vision', 'text'); empty when all is resident. */
  streams: string[];
  /** --think / --reflect (Qwen's stages): the thinker's lm_head, loaded beside the towers (part of resident_bytes). */
  lm_head_bytes?: number;
}

export interface VramPlan {
  width: number;
  height: number;
  weights: WeightsOption | 'as stored';
  budget_bytes: number | null;
  /** Every model fits at once: loaded once, kept across stages and batch images. */
  keep_resident: boolean;
  /** The budget the plan was made against: --vram-budget, else the device's memory when known. */
  plan_budget_bytes: number | null;
  /**
   * Beyond the stages' activations (which include the buffers the pool retains for reuse): the runtime's
   * own buffers (uniform slots, readback staging, realigned views) and rounding slack: 1 % of the budget
   * (of the peak without one). Loaders plan against the budget less this and their stage's activations.
   */
  cache_bytes: number;
  stages: StagePlan[];
  /** Estimated peak GPU bytes of the whole edit (largest stage, or all models at once, + cache). */
  peak_bytes: number;
  /** The smallest --vram-budget any plan fits. */
  minimum_budget_bytes: number;
}

const sumPooled = (bufs: [number, number][]): number => bufs.reduce((s, [b, n]) => s + (b > 0 ? pooledBytes(b) * n : 0), 0);

/**
 * DiT forward activations over B rows of T text + L image tokens, as the pool holds them: a size class
 * keeps as many buffers as were ever live at once in it, so the double blocks' per-stream buffers (B·L
 * image rows, B·T text rows) and the single blocks' joint ones (B·(T+L) rows) are all retained.
 * The dry run measures it (README "Dry run": bytes allocated in step 1 ≤ this).
 */
export function ditActivationBytes(cfg: DitParams, B: number, L: number, T: number, Cllm: number): number {
  const H = cfg.hidden_size, M = mlpHidden(H, cfg.mlp_ratio), S = B * (T + L), hd = H / cfg.num_heads;
  const stream = (r: number): [number, number][] => [
    [r * H * 4, 10], // residual in / out, modulated input, q, k, v, rotated q, k, attention out, projection
    [r * M * 4, 1], // GELU(mlp) branch
  ];
  return sumPooled([
    ...stream(B * L), // double blocks, image stream
    ...stream(B * T), // double blocks, text stream
    ...stream(S), // single blocks
    [S * (H + M) * 4, 1], // cat(attn, mlp) of a single block
    [(T + L) * hd * 2 * 4, 1], // rope table (batch-1, broadcast)
    [B * L * cfg.in_channels * 4, 2], // packed tokens in, prediction out
    [B * T * Cllm * 4, 3], // llm embedding and the connector's stream
    [B * 6 * H * 4, 8], // modulation vectors and their chunks
  ]);
}

/** ditActivationBytes for the DiT file of `files` (reads its header). */
export async function ditActivationFor(files: Pick<ModelFiles, 'dit' | 'hparams'>, B: number, L: number, T: number): Promise<number> {
  const { ckpt: ck, cfg } = await openDitWeights(files.dit, files.hparams ?? {}); // either layout
  try {
    return ditActivationBytes(cfg.dit, B, L, T, cfg.connector.in_channels);
  } finally {
    await ck.close();
  }
}

/** Qwen2.5-VL over P prompts of S tokens each, N vision patches (text layers run layer-major over the prompts). */
export function qwenActivationBytes(cfg: QwenVLConfig, P: number, S: number, N: number): number {
  const t = cfg.text, v = cfg.vision;
  const D = t.hiddenSize, I = t.intermediateSize, hd = D / t.numAttentionHeads, KV = t.numKeyValueHeads * hd;
  const Dv = v.hiddenSize, Iv = v.intermediateSize;
  const text = sumPooled([
    [S * D * 4, 2 * P + 6], // hidden states of every prompt (+ next), normed, q, rotated q, attention out, o_proj
    [S * KV * 4, 4], // k, v, rotated k
    [S * I * 4, 3], // gate, up, act
    [S * hd * 4, 2 * P], // rope cos / sin per prompt
    [S * 4, 4 * P], // masks
  ]);
  const vision = sumPooled([
    [N * Dv * 4, 9],
    [N * Iv * 4, 3],
    [N * hd * 4, 2],
    [(N / 4) * D * 4, 2],
  ]);
  return Math.max(text, vision) + sumPooled([[(N / 4) * D * 4, 1]]); // image embeddings kept for the text pass
}

/** VAE encode or decode at h × w pixels: five buffers of the largest level (conv in / out, norm, residual, upsample). */
export function vaeActivationBytes(cfg: AeConfig, h: number, w: number): number {
  let max = 3 * h * w;
  const n = cfg.ch_mult.length;
  for (let i = 0; i < n; i++) {
    const c = cfg.ch * cfg.ch_mult[i], s = 2 ** i;
    max = Math.max(max, c * (h / s) * (w / s));
    if (i > 0) max = Math.max(max, c * (h / 2 ** (i - 1)) * (w / 2 ** (i - 1))); // decoder upsample output
  }
  return sumPooled([[max * 4, 6], [2 * cfg.z_channels * (h / 8) * (w / 8) * 4, 3]]);
}

export interface PlanOptions {
  /** Working size level (official size_level); the plan assumes a square input. */
  size?: number;
  width?: number;
  height?: number;
  weights?: WeightsOption;
  loras?: readonly LoraFile[];
  budget?: number;
  /** The device's memory, when known: the budget when none is given. */
  deviceBytes?: number;
  /**
   * v1.2: the longest kept prompt span (image tokens + text) the DiT sees; default the image tokens plus
   * V12_PLAN_PROMPT_TOKENS. The run passes its own when a prompt is longer, so the plan never undercounts.
   */
  textTokens?: number;
  /**
   * v1.2 `--think` / `--reflect`: the thinker generates on the embed stage's Qwen (one loaded model, stage
   * 'reason'); `textTokens` is its longest prompt's text (chat template, instruction, the generated texts it
   * quotes), default THINKER_PLAN_TEXT_TOKENS. The run passes its own when that is longer.
   */
  reason?: { reflect: boolean; textTokens?: number };
}

/** v1.2: text tokens (template + instruction) the plan assumes beside the image tokens when no prompt is known. */
export const V12_PLAN_PROMPT_TOKENS = 256;

/**
 * v1.2 thinker: text tokens of its longest prompt the plan assumes when no instruction is known. The longest
 * template (the reflection's) is 711 tokens; with it the instruction and up to three generated texts of 128
 * tokens (a rewritten instruction, the description, the prior reason): instructions up to ~440 tokens fit.
 */
export const THINKER_PLAN_TEXT_TOKENS = 1536;

/**
 * The thinker's generation over its longest prompt (`images` images of at most THINKER_MAX_PIXELS, i.e. 1024
 * tokens and 4096 patches each, beside `textTokens`) and THINKER_MAX_NEW_TOKENS new ones: the KV cache (one K
 * and one V buffer [prompt + new, Hkv·Dh] f32 per layer, models/qwen25vl/generate.ts), the prefill's
 * activations (one prompt through the vision tower and the text layers) and the logits.
 */
export function thinkerActivationBytes(cfg: QwenVLConfig, images: number, textTokens: number): number {
  const t = cfg.text, unit = cfg.vision.patchSize * cfg.vision.spatialMergeSize;
  const imageTokens = images * Math.floor(THINKER_MAX_PIXELS / (unit * unit));
  const L = imageTokens + textTokens, rows = L + THINKER_MAX_NEW_TOKENS;
  const kv = sumPooled([[rows * t.numKeyValueHeads * t.headDim * 4, 2 * t.numHiddenLayers]]);
  return kv + qwenActivationBytes(cfg, 1, L, imageTokens * cfg.vision.spatialMergeSize ** 2) + sumPooled([[t.vocabSize * 4, 3]]);
}

/** Images in the thinker's largest call: the rewrite sees the photo; the reflection and score1 the photo and an edit. */
export const thinkerImages = (reflect: boolean): number => (reflect ? 2 : 1);

/** v1.2: the image tokens Qwen sees for a w × h working image (smart_resize with the fork's processor pixels). */
export function v12ImageTokens(width: number, height: number): number {
  const px = V12_DEFAULTS.processorPixels;
  const [rh, rw] = smartResize(height, width, 28, px.min_pixels, px.max_pixels, 'processor');
  return (rh * rw) / (28 * 28);
}

/**
 * What a stage's loader plans its residency against: the budget less the stage's activations. Qwen's stages
 * (embed, and the thinker's 'reason') share one loaded model, so one budget: less the larger of their
 * activations and the thinker's lm_head.
 */
export function stageBudget(plan: VramPlan, stage: StagePlan['stage']): number | undefined {
  if (plan.plan_budget_bytes === null || plan.keep_resident) return undefined;
  const s = plan.stages.find((x) => x.stage === stage)!;
  const reserve = s.model === 'qwen' ? Math.max(...plan.stages.filter((x) => x.model === 'qwen').map((x) => x.activation_bytes)) + (s.lm_head_bytes ?? 0) : s.activation_bytes;
  return Math.max(1, plan.plan_budget_bytes - plan.cache_bytes - reserve);
}

function tooSmall(budget: number, minimum: number): never {
  const gb = (x: number) => (x >= 1e9 ? `${(x / 1e9).toFixed(2)} GB` : `${(x / 1e6).toFixed(1)} MB`);
  throw new Step1xError(`--vram-budget ${gb(budget)} is too small for any plan: the edit needs at least ${gb(minimum)} (${minimum} bytes) with these weights and size`, ExitCode.GPU_OOM);
}

/** Plan an edit from the model files' headers. */
export async function planEdit(files: Pick<ModelFiles, 'dit' | 'vae' | 'qwenDir' | 'hparams' | 'diffusers'>, o: PlanOptions = {}): Promise<VramPlan> {
  // v1.2 (pipeline/v12-edit.ts): the fork's size level 1024; the prompt and "" run one by one at their own
  // lengths (no padding), so the DiT counts two rows of the longest kept span and Qwen two prompts of it + the drop
  const v12 = files.diffusers?.version === 'v1.2';
  const size = o.size ?? (v12 ? V12_DEFAULTS.sizeLevel : 512);
  const [width, height] = o.width && o.height ? [o.width, o.height] : inputProcessSize(size, size, size);
  // a budget above the device's memory (when known) is the device's memory
  const budget = o.budget !== undefined && o.deviceBytes !== undefined ? Math.min(o.budget, o.deviceBytes) : (o.budget ?? o.deviceBytes);
  const slack = budget !== undefined ? Math.floor(budget / 100) : 0;
  const modelBudget = budget !== undefined ? budget - slack : undefined;
  const ditPolicy: WeightPolicy = { weights: o.weights, loras: o.loras };
  const qwenPolicy: WeightPolicy = { weights: o.weights };
  const lh = height / 8, lw = width / 8;
  const L = 2 * Math.floor((lh * lw) / 4);
  const v12Tokens = v12 ? v12ImageTokens(width, height) : 0;
  const T = v12 ? (o.textTokens ?? v12Tokens + V12_PLAN_PROMPT_TOKENS) : (files.hparams?.embedder?.max_length ?? STEP1X_MAX_LENGTH);

  // ---- DiT ----
  const { ckpt: dck, cfg } = await openDitWeights(files.dit, files.hparams ?? {}); // official file or diffusers transformer/
  let dit: StagePlan;
  let ditAll: number;
  try {
    const act = ditActivationBytes(cfg.dit, 2, L, T, cfg.connector.in_channels);
    const all = planResidency(dck, cfg.dit, { weights: ditPolicy });
    const blocks = all.slots.reduce((s, b) => s + b.bytes, 0);
    const reserve = streamReserve(all.slots);
    ditAll = all.fixedBytes + blocks;
    const min = all.fixedBytes + reserve + act;
    let resident = ditAll;
    let streamedBlocks = 0;
    if (modelBudget !== undefined && ditAll + act > modelBudget) {
      if (min > modelBudget) resident = -1;
      else {
        const p = planResidency(dck, cfg.dit, { weights: ditPolicy, budgetBytes: modelBudget, activationBytes: act });
        resident = all.fixedBytes + [...p.resident].reduce((s, j) => s + p.slots[j].bytes, 0);
        streamedBlocks = p.slots.length - p.resident.size;
      }
    }
    const streamed = resident < 0 ? blocks : ditAll - resident;
    const working = streamed > 0 ? reserve : 0;
    const res = resident < 0 ? all.fixedBytes : resident;
    dit = { stage: 'sample', model: 'dit', resident_bytes: res, streamed_bytes: streamed, working_bytes: working, activation_bytes: act, peak_bytes: res + working + act, min_bytes: min, streams: streamedBlocks ? [`${streamedBlocks} blocks`] : [] };
  } finally {
    await dck.close();
  }

  // ---- Qwen2.5-VL ----
  const qcfg = await loadQwenConfig(files.qwenDir);
  const qck = await openQwenCheckpoint(files.qwenDir, qcfg);
  const qwen: StagePlan[] = [];
  let qwenAll: number;
  try {
    const qckp = withWeightPolicy(qck, qwenPolicy);
    const vs = QwenVisionTower.sizes(qckp, qcfg.vision);
    const ts = QwenTextModel.sizes(qckp, qcfg.text);
    const maxPixels = files.hparams?.embedder?.max_pixels ?? STEP1X_MAX_PIXELS;
    const unit = qcfg.vision.patchSize * qcfg.vision.spatialMergeSize;
    const imageTokens = v12 ? v12Tokens : Math.min(Math.floor(maxPixels / (unit * unit)), Math.ceil(width / unit) * Math.ceil(height / unit));
    const N = imageTokens * qcfg.vision.spatialMergeSize ** 2;
    const act = qwenActivationBytes(qcfg, 2, v12 ? T + V12_DROP_PREFIX : imageTokens + T, N);
    // the thinker (v1.2 --think / --reflect) generates on the same loaded Qwen, with its lm_head beside the
    // towers (the tied embedding table where there is no lm_head): one residency for both stages
    const reason = v12 && o.reason ? o.reason : undefined;
    const actReason = reason ? thinkerActivationBytes(qcfg, thinkerImages(reason.reflect), reason.textTokens ?? THINKER_PLAN_TEXT_TOKENS) : 0;
    const head = reason ? gpuTensorBytes(qckp.info(qckp.has(LM_HEAD) ? LM_HEAD : EMBED_TOKENS), qwenPolicy).reduce((a, b) => a + pooledBytes(b), 0) : 0;
    const reserve = Math.max(act, actReason) + head;
    qwenAll = vs.blocks + vs.fixed + ts.blocks + ts.fixed + head;
    const textLayer = ts.blocks / qcfg.text.numHiddenLayers, visionBlock = vs.blocks / qcfg.vision.depth;
    const min = vs.fixed + ts.fixed + 2 * textLayer + 2 * visionBlock + reserve;
    const { streamVision, streamText } = modelBudget === undefined ? { streamVision: false, streamText: false } : residencyPlan(vs, ts, qcfg.text.numHiddenLayers, Math.max(1, modelBudget - reserve));
    const res = vs.fixed + ts.fixed + (streamVision ? 0 : vs.blocks) + (streamText ? 0 : ts.blocks) + head;
    const working = (streamVision ? 2 * visionBlock : 0) + (streamText ? 2 * textLayer : 0);
    const streams = [...(streamText ? ['text'] : []), ...(streamVision ? ['vision'] : [])];
    const stage = (s: 'reason' | 'embed', a: number): StagePlan =>
      ({ stage: s, model: 'qwen', resident_bytes: res, streamed_bytes: qwenAll - res, working_bytes: working, activation_bytes: a, peak_bytes: res + working + a, min_bytes: min, streams, ...(reason ? { lm_head_bytes: head } : {}) });
    if (reason) qwen.push(stage('reason', actReason));
    qwen.push(stage('embed', act));
  } finally {
    await qck.close();
  }

  // ---- VAE ----
  const { ckpt: vck, base: vaeBase } = await openVaeWeights(files.vae);
  let vaeW: number, encAct: number, decAct: number;
  try {
    const acfg = inferAeConfig((n) => (vck.has(n) ? vck.info(n).shape : undefined), vck.keys(), { ...((files.hparams?.ae ?? {}) as Partial<AeConfig>), ...vaeBase });
    // the VAE keeps 4-D bf16 kernels packed and widens everything else to f32 (models/vae.ts)
    vaeW = vck.keys().reduce((s, k) => {
      const i = vck.info(k);
      const n = i.shape.reduce((a, b) => a * b, 1);
      return s + pooledBytes(n * (i.dtype === 'BF16' && i.shape.length === 4 ? 2 : 4));
    }, 0);
    encAct = vaeActivationBytes(acfg, height, width);
    decAct = encAct;
  } finally {
    await vck.close();
  }
  const enc: StagePlan = { stage: 'encode', model: 'vae', resident_bytes: vaeW, streamed_bytes: 0, working_bytes: 0, activation_bytes: encAct, peak_bytes: vaeW + encAct, min_bytes: vaeW + encAct, streams: [] };
  const dec: StagePlan = { ...enc, stage: 'decode', activation_bytes: decAct, peak_bytes: vaeW + decAct, min_bytes: vaeW + decAct };
  const stages = [...qwen, enc, dit, dec];
  const maxAct = Math.max(...stages.map((s) => s.activation_bytes));
  const together = qwenAll + ditAll + vaeW + maxAct;
  const keep = modelBudget === undefined || together <= modelBudget;
  const minStage = Math.max(...stages.map((s) => s.min_bytes));
  const minimum = Math.ceil((minStage * 100) / 99) + 1;
  if (budget !== undefined && (dit.resident_bytes < 0 || minStage > (modelBudget as number))) tooSmall(budget, minimum);
  if (keep) for (const s of stages) (s.resident_bytes = s.model === 'qwen' ? qwenAll : s.model === 'dit' ? ditAll : vaeW), (s.streamed_bytes = 0), (s.working_bytes = 0), (s.streams = []), (s.peak_bytes = s.resident_bytes + s.activation_bytes);
  const live = keep ? together : Math.max(...stages.map((s) => s.peak_bytes));
  const cache = budget !== undefined ? slack : Math.ceil(live / 100);
  return {
    width, height, weights: o.weights ?? 'as stored', budget_bytes: o.budget ?? null, plan_budget_bytes: budget ?? null, keep_resident: keep, cache_bytes: cache, stages,
    peak_bytes: live + cache, minimum_budget_bytes: minimum,
  };
}

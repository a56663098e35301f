/**
 * Qwen2_5_VLForConditionalGeneration without lm_head: config + checkpoint + vision tower + language
 * model, loaded under a GPU byte budget. Blocks of a tower are resident when that tower's blocks
 * plus the always-resident tensors fit `gpuBudgetBytes`, otherwise streamed from disk block by
 * block (see loader.ts). `dispose()` frees every GPU tensor and closes the checkpoint.
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import type { Checkpoint } from '../../io/checkpoint.js';
import { loadQwenConfig, type QwenVLConfig } from './config.js';
import { openQwenCheckpoint, residencyPlan } from './loader.js';
import { QwenVisionTower, type VisionTrace } from './vision.js';
import { QwenTextModel, type TextAttention, type TextSequence } from './text.js';
import { getRopeIndex, type GridThw } from './positions.js';
import { fail } from '../../errors.js';
import { withWeightPolicy, type WeightPolicy } from '../../nn/weight.js';

export interface QwenLoadOptions {
  /** GPU bytes the weights may occupy (default: unlimited = everything resident). */
  gpuBudgetBytes?: number;
  /** Checkpoint path(s) when they differ from the config directory (e.g. a single model.safetensors). */
  weights?: string | string[];
  /** How Linear weights load (`--weights`; nn/weight.ts); the residency plan counts them that way. */
  policy?: WeightPolicy;
}

/** One prompt after tokenisation (processor output). */
export interface QwenInput {
  inputIds: Int32Array;
  /** Default `inputIds > 0` as Step1X builds it. */
  attentionMask?: Int32Array;
  /** [N, 1176] pixel values of the images in the prompt (processor layout) and their grids. */
  pixelValues: Float32Array | null;
  gridThw: GridThw[];
  /** Precomputed image embeddings [n_image_tokens, D] (host) instead of running the vision tower on pixelValues. */
  imageEmbeds?: Float32Array;
  /** Semantics of masked tokens' own query rows (default 'sdpa', the current official embedder). */
  textAttention?: TextAttention;
  /**
   * The mask only get_rope_index sees (Step1X-Edit v1.2 passes `ids > 0` there but runs the LLM with no
   * attention mask): with it, attention uses `attentionMask` or, when that is absent, none (all ones).
   */
  ropeMask?: Int32Array;
}

export interface QwenTrace {
  vision?: VisionTrace;
  visionOut?(t: Tensor): Promise<void>;
  positions?(positionIds: Int32Array, ropeDelta: number): Promise<void>;
  inputsEmbeds?(t: Tensor): Promise<void>;
  /** Raw output of decoder layer i (pre final norm), [1, L, D]. */
  layer?(i: number, t: Tensor, seq: number): Promise<void>;
}

export class QwenVL {
  private constructor(
    readonly cfg: QwenVLConfig,
    readonly ckpt: Checkpoint,
    readonly visual: QwenVisionTower,
    readonly model: QwenTextModel,
  ) {}

  /** `dir` holds config.json and the weights (sharded with index, or one .safetensors). */
  static async load(g: Gpu, dir: string, opts: QwenLoadOptions = {}): Promise<QwenVL> {
    const cfg = await loadQwenConfig(dir);
    const ckpt = withWeightPolicy(await openQwenCheckpoint(opts.weights ?? dir, cfg), opts.policy);
    const budget = opts.gpuBudgetBytes ?? Infinity;
    let visual: QwenVisionTower | null = null;
    try {
      const vs = QwenVisionTower.sizes(ckpt, cfg.vision);
      const ts = QwenTextModel.sizes(ckpt, cfg.text);
      const { streamVision, streamText } = residencyPlan(vs, ts, cfg.text.numHiddenLayers, budget);
      visual = await QwenVisionTower.load(g, ckpt, cfg.vision, streamVision);
      const text = await QwenTextModel.load(g, ckpt, cfg.text, streamText);
      return new QwenVL(cfg, ckpt, visual, text);
    } catch (e) {
      await visual?.dispose();
      await ckpt.close();
      throw e;
    }
  }

  get streamed(): { vision: boolean; text: boolean } {
    return { vision: this.visual.blocks.streamed, text: this.model.layers.streamed };
  }

  /**
   * Full forward (no generation) of several prompts: vision once per distinct pixel-values array,
   * then the language model layer-major over all prompts. Returns the final normed hidden states
   * [1, L_i, D] per prompt (= outputs.hidden_states[-1]).
   */
  async forward(g: Gpu, inputs: QwenInput[], trace: QwenTrace = {}): Promise<Tensor[]> {
    // the first step of the text chain: image embeddings (freed before layer 0) and each prompt's state
    const sequences = async (): Promise<TextSequence[]> => {
      const vis = new Map<Float32Array, Tensor>();
      const seqs: TextSequence[] = [];
      for (const inp of inputs) {
        let img: Tensor | null = null;
        if (inp.imageEmbeds) {
          const D = this.cfg.text.hiddenSize;
          if (inp.imageEmbeds.length % D) fail(`imageEmbeds: ${inp.imageEmbeds.length} values are not rows of ${D}`);
          img = g.upload(inp.imageEmbeds, [inp.imageEmbeds.length / D, D], 'f32', 'image_embeds');
          vis.set(inp.imageEmbeds, img);
        } else if (inp.pixelValues) {
          img = vis.get(inp.pixelValues) ?? null;
          if (!img) {
            img = await this.visual.forward(g, inp.pixelValues, inp.gridThw, trace.vision);
            vis.set(inp.pixelValues, img);
            if (trace.visionOut) await trace.visionOut(img);
          }
        }
        const mask = inp.attentionMask ?? (inp.ropeMask ? new Int32Array(inp.inputIds.length).fill(1) : Int32Array.from(inp.inputIds, (v) => (v > 0 ? 1 : 0)));
        const { positionIds, ropeDelta } = getRopeIndex(inp.inputIds, inp.ropeMask ?? mask, img ? inp.gridThw : [], {
          ...this.cfg, spatialMergeSize: this.cfg.vision.spatialMergeSize,
        });
        if (trace.positions) await trace.positions(positionIds, ropeDelta);
        const s = await this.model.prepare(g, inp.inputIds, positionIds, mask, this.cfg.imageTokenId, img, inp.textAttention);
        seqs.push(s);
        if (trace.inputsEmbeds) await trace.inputsEmbeds(s.h);
      }
      return seqs;
    };
    const onLayer = trace.layer;
    return this.model.forward(g, inputs.length, sequences, onLayer ? (i, s, h) => onLayer(i, h, s) : undefined);
  }

  async dispose(): Promise<void> {
    await this.visual.dispose();
    await this.model.dispose();
    await this.ckpt.close();
  }
}

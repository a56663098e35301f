/**
 * Qwen2.5-VL checkpoint loading: the exact hub key set (`model.*`, `visual.*`; `lm_head.weight`
 * ignored), derived from module declarations whose field names are the checkpoint keys (nn/module.ts:
 * the same declarations load, free and count bytes), and `LayerSet`, which
 * keeps blocks resident when they fit the GPU byte budget and otherwise streams them from disk
 * (load block i — prefetching i+1 — run, free). Both modes run the same kernels on the same
 * tensors, so results are identical.
 *
 * bf16 stays packed on the GPU. The real text MLP matrices (18944×3584 bf16, 129.5 MiB) exceed
 * lavapipe's 128 MiB binding limit; ops/linear splits them along N. `model.embed_tokens.weight`
 * (1.09 GB) is never uploaded: text.ts gathers the needed rows on the host.
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { Tensor } from '../../runtime/tensor.js';
import { Checkpoint, checkKeys } from '../../io/checkpoint.js';
import { bytesToF32 } from '../../io/safetensors.js';
import { Linear } from '../../nn/linear.js';
import { Module, param, type TensorParam } from '../../nn/module.js';
import { BlockStream } from '../../nn/block-stream.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenTextConfig, QwenVisionConfig, QwenVLConfig } from './config.js';

export const LM_HEAD = 'lm_head.weight';
export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const ignoreLmHead = (name: string): boolean => name === LM_HEAD;

/** name → shape of every tensor the model needs, from the module declarations (728 for the real 7B; + lm_head on the hub = 729). */
export function qwenExpectedShapes(cfg: QwenVLConfig): Map<string, number[]> {
  const t = cfg.text, v = cfg.vision;
  // embed_tokens is never uploaded: text.ts gathers its rows on the host by this name
  const m = new Map<string, number[]>([[EMBED_TOKENS, [t.vocabSize, t.hiddenSize]]]);
  const add = (mod: Module, prefix: string) => mod.expectedKeys(prefix).forEach((shape, name) => m.set(name, shape));
  for (let i = 0; i < t.numHiddenLayers; i++) add(new DecoderLayerWeights(t), `model.layers.${i}`);
  add(new TextFixed(t), 'model');
  add(new VisionFixed(v), 'visual');
  for (let i = 0; i < v.depth; i++) add(new VisionBlockWeights(v), `visual.blocks.${i}`);
  return m;
}

/** GPU bytes of `count` blocks declared by `block` under `prefix.i` and of the always-resident `fixed` module. */
export function towerBytes(ckpt: Checkpoint, block: Module, prefix: string, count: number, fixed: Module, fixedPrefix: string): { blocks: number; fixed: number } {
  let blocks = 0;
  for (let i = 0; i < count; i++) blocks += block.gpuBytes(ckpt, `${prefix}.${i}`);
  return { blocks, fixed: fixed.gpuBytes(ckpt, fixedPrefix) };
}

/** Open a Qwen2.5-VL checkpoint (dir with index, single file, or a list of files) and check its key set against the config. */
export async function openQwenCheckpoint(path: string | string[], cfg: QwenVLConfig): Promise<Checkpoint> {
  const ckpt = typeof path === 'string' ? await Checkpoint.open(path) : await Checkpoint.openFiles(path);
  try {
    checkKeys(ckpt, qwenExpectedShapes(cfg), { ignore: ignoreLmHead, what: 'Qwen2.5-VL checkpoint' });
  } catch (e) {
    await ckpt.close();
    throw e;
  }
  return ckpt;
}

/** Read embedding rows for `ids` from the checkpoint on the host: [ids.length, D] f32 (bf16 widened exactly). */
export async function gatherEmbeddingRows(ckpt: Checkpoint, ids: Int32Array, name = EMBED_TOKENS): Promise<Float32Array> {
  const info = ckpt.info(name);
  const [V, D] = info.shape;
  const out = new Float32Array(ids.length * D);
  const cache = new Map<number, Float32Array>();
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= V) fail(`input_ids[${i}] = ${id} is outside the vocabulary (${V} rows in ${name})`, ExitCode.USAGE);
    let row = cache.get(id);
    if (!row) {
      const bytes = await ckpt.readRowsBytes(name, id, 1);
      row = bytesToF32(ckpt.path, { ...info, shape: [1, D] }, bytes);
      cache.set(id, row);
    }
    out.set(row, i * D);
  }
  return out;
}

/** A module with one `weight`: Qwen2RMSNorm (`norm1`, `ln_q`, `input_layernorm`, `model.norm`), the Conv3d patch_embed.proj. */
export class Weighted extends Module {
  readonly weight: TensorParam;
  constructor(...shape: number[]) {
    super();
    this.weight = param(...shape);
  }
}

/** `mlp`: down(silu(gate)·up), biased in the vision tower, not in the LLM. */
export class GatedMlp extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;
  constructor(D: number, I: number, bias: boolean) {
    super();
    this.gate_proj = new Linear(I, D, { bias });
    this.up_proj = new Linear(I, D, { bias });
    this.down_proj = new Linear(D, I, { bias });
  }
}

/** visual.blocks.N: the fused attn.qkv is split into q/k/v row views (rows (3, H, Dh)) per forward. */
export class VisionBlockWeights extends Module {
  readonly norm1: Weighted;
  readonly norm2: Weighted;
  readonly attn: VisionAttention;
  readonly mlp: GatedMlp;
  constructor(v: QwenVisionConfig) {
    super();
    this.norm1 = new Weighted(v.hiddenSize);
    this.norm2 = new Weighted(v.hiddenSize);
    this.attn = new VisionAttention(v.hiddenSize);
    this.mlp = new GatedMlp(v.hiddenSize, v.intermediateSize, true);
  }
}

export class VisionAttention extends Module {
  readonly qkv: Linear;
  readonly proj: Linear;
  constructor(Dv: number) {
    super();
    this.qkv = new Linear(3 * Dv, Dv);
    this.proj = new Linear(Dv, Dv);
  }
}

/** visual.* outside the blocks: patch_embed (Conv3d, no bias) and the merger (ln_q, mlp.0 → GELU → mlp.2). */
export class VisionFixed extends Module {
  readonly patch_embed: PatchEmbed;
  readonly merger: Merger;
  constructor(v: QwenVisionConfig) {
    super();
    this.patch_embed = new PatchEmbed(v);
    this.merger = new Merger(v);
  }
}

class PatchEmbed extends Module {
  readonly proj: Weighted;
  constructor(v: QwenVisionConfig) {
    super();
    this.proj = new Weighted(v.hiddenSize, v.inChans, v.temporalPatchSize, v.patchSize, v.patchSize);
  }
}

class Merger extends Module {
  readonly ln_q: Weighted;
  /** torch Sequential(Linear, GELU, Linear): keys `mlp.0`, `mlp.2`. */
  readonly mlp: [Linear, 'gelu_erf', Linear];
  constructor(v: QwenVisionConfig) {
    super();
    const M = v.hiddenSize * v.spatialMergeSize ** 2;
    this.ln_q = new Weighted(v.hiddenSize);
    this.mlp = [new Linear(M, M), 'gelu_erf', new Linear(v.outHiddenSize, M)];
  }
}

/** model.layers.N: q/k/v with bias, o_proj and the MLP without. */
export class DecoderLayerWeights extends Module {
  readonly input_layernorm: Weighted;
  readonly post_attention_layernorm: Weighted;
  readonly self_attn: TextAttention;
  readonly mlp: GatedMlp;
  constructor(t: QwenTextConfig) {
    super();
    this.input_layernorm = new Weighted(t.hiddenSize);
    this.post_attention_layernorm = new Weighted(t.hiddenSize);
    this.self_attn = new TextAttention(t);
    this.mlp = new GatedMlp(t.hiddenSize, t.intermediateSize, false);
  }
}

export class TextAttention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  constructor(t: QwenTextConfig) {
    super();
    const D = t.hiddenSize, KV = t.numKeyValueHeads * t.headDim;
    this.q_proj = new Linear(D, D);
    this.k_proj = new Linear(KV, D);
    this.v_proj = new Linear(KV, D);
    this.o_proj = new Linear(D, D, { bias: false });
  }
}

/** model.* outside the layers (embed_tokens stays on the host). */
export class TextFixed extends Module {
  readonly norm: Weighted;
  constructor(t: QwenTextConfig) {
    super();
    this.norm = new Weighted(t.hiddenSize);
  }
}

/**
 * A tower's blocks, all resident or all streamed, on the shared streaming engine (nn/block-stream.ts).
 * Blocks load untracked (runtime/scope.ts): one read ahead in the background appears while some forward
 * scope is open, and must outlive it.
 */
export class LayerSet<T extends { dispose(): void }> extends BlockStream<T> {
  constructor(g: Gpu, count: number, loader: (i: number) => Promise<T>, readonly streamed: boolean) {
    super(count, (i) => g.untracked(() => loader(i)), () => !streamed);
  }
}

/** Decide residency: stream when the blocks (plus what is always resident) exceed the budget. */
export function shouldStream(blockBytes: number, fixedBytes: number, budgetBytes: number): boolean {
  if (!(budgetBytes > 0)) fail(`GPU budget must be a positive byte count, got ${budgetBytes}`, ExitCode.USAGE);
  return blockBytes + fixedBytes > budgetBytes;
}

export interface TowerBytes {
  blocks: number;
  fixed: number;
}

/**
 * Which towers stream under `budgetBytes`. Everything resident when it all fits; otherwise the text
 * layers (the bulk) stream, and the vision blocks stay resident only if they fit next to the fixed
 * parts and the two text layers a streamed step holds (current + prefetched), since both towers'
 * weights are live at the same time.
 */
export function residencyPlan(vision: TowerBytes, text: TowerBytes, textLayers: number, budgetBytes: number): { streamVision: boolean; streamText: boolean } {
  const fixed = vision.fixed + text.fixed;
  const streamText = shouldStream(vision.blocks + text.blocks, fixed, budgetBytes);
  const textWorking = streamText ? (2 * text.blocks) / textLayers : text.blocks;
  return { streamVision: streamText && shouldStream(vision.blocks, fixed + textWorking, budgetBytes), streamText };
}

/**
 * Qwen2.5-VL checkpoint loading: the exact hub key set (`model.*`, `visual.*`; `lm_head.weight`
 * ignored), per-block weight holders whose field names mirror the checkpoint, and `LayerSet`, which
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
import { loadWeight } from '../../nn/weights.js';
import { Linear } from '../../nn/linear.js';
import { BlockStream } from '../../nn/block-stream.js';
import { gpuTensorBytes, weightPolicy } from '../../nn/weight.js';
import { ExitCode, fail } from '../../errors.js';
import type { QwenVLConfig } from './config.js';

export const LM_HEAD = 'lm_head.weight';
export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const ignoreLmHead = (name: string): boolean => name === LM_HEAD;

/** name → shape of every tensor the model needs, from the config (728 for the real 7B; + lm_head on the hub = 729). */
export function qwenExpectedShapes(cfg: QwenVLConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const t = cfg.text, v = cfg.vision;
  const D = t.hiddenSize, I = t.intermediateSize, KV = t.numKeyValueHeads * t.headDim;
  m.set(EMBED_TOKENS, [t.vocabSize, D]);
  for (let i = 0; i < t.numHiddenLayers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [D]);
    m.set(`${p}.post_attention_layernorm.weight`, [D]);
    m.set(`${p}.self_attn.q_proj.weight`, [D, D]);
    m.set(`${p}.self_attn.q_proj.bias`, [D]);
    m.set(`${p}.self_attn.k_proj.weight`, [KV, D]);
    m.set(`${p}.self_attn.k_proj.bias`, [KV]);
    m.set(`${p}.self_attn.v_proj.weight`, [KV, D]);
    m.set(`${p}.self_attn.v_proj.bias`, [KV]);
    m.set(`${p}.self_attn.o_proj.weight`, [D, D]);
    m.set(`${p}.mlp.gate_proj.weight`, [I, D]);
    m.set(`${p}.mlp.up_proj.weight`, [I, D]);
    m.set(`${p}.mlp.down_proj.weight`, [D, I]);
  }
  m.set('model.norm.weight', [D]);
  const Dv = v.hiddenSize, Iv = v.intermediateSize, M = Dv * v.spatialMergeSize ** 2;
  m.set('visual.patch_embed.proj.weight', [Dv, v.inChans, v.temporalPatchSize, v.patchSize, v.patchSize]);
  for (let i = 0; i < v.depth; i++) {
    const p = `visual.blocks.${i}`;
    m.set(`${p}.norm1.weight`, [Dv]);
    m.set(`${p}.norm2.weight`, [Dv]);
    m.set(`${p}.attn.qkv.weight`, [3 * Dv, Dv]);
    m.set(`${p}.attn.qkv.bias`, [3 * Dv]);
    m.set(`${p}.attn.proj.weight`, [Dv, Dv]);
    m.set(`${p}.attn.proj.bias`, [Dv]);
    for (const n of ['gate_proj', 'up_proj']) {
      m.set(`${p}.mlp.${n}.weight`, [Iv, Dv]);
      m.set(`${p}.mlp.${n}.bias`, [Iv]);
    }
    m.set(`${p}.mlp.down_proj.weight`, [Dv, Iv]);
    m.set(`${p}.mlp.down_proj.bias`, [Dv]);
  }
  m.set('visual.merger.ln_q.weight', [Dv]);
  m.set('visual.merger.mlp.0.weight', [M, M]);
  m.set('visual.merger.mlp.0.bias', [M]);
  m.set('visual.merger.mlp.2.weight', [v.outHiddenSize, M]);
  m.set('visual.merger.mlp.2.bias', [v.outHiddenSize]);
  return m;
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

/** Bytes the named tensors occupy on the GPU (as stored: bf16 stays 2 bytes). */
export function tensorBytes(ckpt: Checkpoint, names: string[]): number {
  const p = weightPolicy(ckpt); // --weights: Linear weights as they will be held (nn/weight.ts)
  let n = 0;
  for (const k of names) for (const b of gpuTensorBytes(ckpt.info(k), p)) n += b;
  return n;
}

/** visual.blocks.N: fields mirror the checkpoint (attn.qkv is split into q/k/v at load, rows (3, H, Dh)). */
export class VisionBlockWeights {
  constructor(
    readonly norm1: Tensor,
    readonly norm2: Tensor,
    readonly attn: { q: Linear; k: Linear; v: Linear; proj: Linear },
    readonly mlp: { gate_proj: Linear; up_proj: Linear; down_proj: Linear },
  ) {}

  static names(i: number): string[] {
    const p = `visual.blocks.${i}`;
    return ['norm1.weight', 'norm2.weight', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight', 'attn.proj.bias',
      ...['gate_proj', 'up_proj', 'down_proj'].flatMap((n) => [`mlp.${n}.weight`, `mlp.${n}.bias`])].map((s) => `${p}.${s}`);
  }

  static async load(g: Gpu, ckpt: Checkpoint, i: number): Promise<VisionBlockWeights> {
    const p = `visual.blocks.${i}`;
    // q, k, v as row views of the fused Linear (its Weight carries scales when packed)
    const qkv = await Linear.load(g, ckpt, `${p}.attn.qkv`, { bias: true });
    const Dv = qkv.outFeatures / 3;
    const [q, k, v] = [0, 1, 2].map((i) => qkv.rows(i * Dv, Dv));
    qkv.dispose();
    return new VisionBlockWeights(
      await loadWeight(g, ckpt, `${p}.norm1.weight`),
      await loadWeight(g, ckpt, `${p}.norm2.weight`),
      { q, k, v,
        proj: await Linear.load(g, ckpt, `${p}.attn.proj`, { bias: true }) },
      { gate_proj: await Linear.load(g, ckpt, `${p}.mlp.gate_proj`, { bias: true }),
        up_proj: await Linear.load(g, ckpt, `${p}.mlp.up_proj`, { bias: true }),
        down_proj: await Linear.load(g, ckpt, `${p}.mlp.down_proj`, { bias: true }) },
    );
  }

  dispose(): void {
    this.norm1.dispose();
    this.norm2.dispose();
    for (const l of [...Object.values(this.attn), ...Object.values(this.mlp)]) l.dispose();
  }
}

/** model.layers.N: q/k/v with bias, o_proj and the MLP without. */
export class DecoderLayerWeights {
  constructor(
    readonly input_layernorm: Tensor,
    readonly post_attention_layernorm: Tensor,
    readonly self_attn: { q_proj: Linear; k_proj: Linear; v_proj: Linear; o_proj: Linear },
    readonly mlp: { gate_proj: Linear; up_proj: Linear; down_proj: Linear },
  ) {}

  static names(i: number): string[] {
    const p = `model.layers.${i}`;
    return ['input_layernorm.weight', 'post_attention_layernorm.weight', 'self_attn.q_proj.weight', 'self_attn.q_proj.bias',
      'self_attn.k_proj.weight', 'self_attn.k_proj.bias', 'self_attn.v_proj.weight', 'self_attn.v_proj.bias',
      'self_attn.o_proj.weight', 'mlp.gate_proj.weight', 'mlp.up_proj.weight', 'mlp.down_proj.weight'].map((s) => `${p}.${s}`);
  }

  static async load(g: Gpu, ckpt: Checkpoint, i: number): Promise<DecoderLayerWeights> {
    const p = `model.layers.${i}`;
    const lin = (n: string, bias: boolean) => Linear.load(g, ckpt, `${p}.${n}`, { bias });
    return new DecoderLayerWeights(
      await loadWeight(g, ckpt, `${p}.input_layernorm.weight`),
      await loadWeight(g, ckpt, `${p}.post_attention_layernorm.weight`),
      { q_proj: await lin('self_attn.q_proj', true), k_proj: await lin('self_attn.k_proj', true),
        v_proj: await lin('self_attn.v_proj', true), o_proj: await lin('self_attn.o_proj', false) },
      { gate_proj: await lin('mlp.gate_proj', false), up_proj: await lin('mlp.up_proj', false), down_proj: await lin('mlp.down_proj', false) },
    );
  }

  dispose(): void {
    this.input_layernorm.dispose();
    this.post_attention_layernorm.dispose();
    for (const l of [...Object.values(this.self_attn), ...Object.values(this.mlp)]) l.dispose();
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

  /** A streamed block kept loaded for the next use of the same index (`again`). */
  private kept: { i: number; b: T } | undefined;

  /**
   * fn on block i; a streamed block is freed once fn has returned (its work is recorded by then), or
   * with `again` kept for the next use(i) (layer-major passes over several sequences).
   */
  async use<R>(i: number, fn: (block: T) => R | Promise<R>, opts: { again?: boolean } = {}): Promise<R> {
    const k = this.kept;
    this.kept = undefined;
    if (k && k.i !== i) this.release(k.i, k.b);
    const b = k?.i === i ? k.b : await this.get(i);
    let again = false;
    try {
      const r = await fn(b);
      again = !!opts.again;
      return r;
    } finally {
      if (again) this.kept = { i, b };
      else this.release(i, b);
    }
  }

  override async dispose(): Promise<void> {
    if (this.kept) this.release(this.kept.i, this.kept.b);
    this.kept = undefined;
    await super.dispose();
  }
}

/** Decide residency: stream when the blocks (plus what is always resident) exceed the budget. */
export function shouldStream(mode: 'auto' | 'always' | 'never', blockBytes: number, fixedBytes: number, budgetBytes: number): boolean {
  if (mode === 'always') return true;
  if (mode === 'never') return false;
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
export function residencyPlan(mode: 'auto' | 'always' | 'never', vision: TowerBytes, text: TowerBytes, textLayers: number, budgetBytes: number): { streamVision: boolean; streamText: boolean } {
  if (mode !== 'auto') return { streamVision: mode === 'always', streamText: mode === 'always' };
  const fixed = vision.fixed + text.fixed;
  const streamText = shouldStream(mode, vision.blocks + text.blocks, fixed, budgetBytes);
  const textWorking = streamText ? (2 * text.blocks) / textLayers : text.blocks;
  return { streamVision: streamText && shouldStream(mode, vision.blocks, fixed + textWorking, budgetBytes), streamText };
}

/**
 * Step1XEdit (modules/model_edit.py): img_in / time_in / vector_in / txt_in → 19 double-stream and 38
 * single-stream blocks (src/models/dit-blocks.ts) → final layer on the image tokens, with the connector
 * (src/models/connector.ts) producing the text stream and the pooled vector. Blocks are resident or
 * streamed from the checkpoint under a GPU budget (planResidency in dit-config.ts).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { Checkpoint, checkKeys } from '../io/checkpoint.js';
import { Linear } from '../nn/linear.js';
import { withWeightPolicy } from '../nn/weight.js';
import { BlockStream } from '../nn/block-stream.js';
import { Module, hold } from '../nn/module.js';
import { silu, add, sub } from '../ops/elementwise.js';
import { layerNorm } from '../ops/norm.js';
import { concat, slice } from '../ops/layout.js';
import { withF16Redo } from '../ops/act-dtype.js';
import { Qwen2Connector, timestepEmbedding, type ConnectorText, type Tap } from './connector.js';
import { configFromCheckpoint, ditWeightPolicy, expectedDitKeys, planResidency, TIME_FREQ_DIM, type DitHparams, type DitLoadOptions, type DitParams, type DitVersion, type Slot, type Step1xConfig } from './dit-config.js';
import { fail } from '../errors.js';
import { DoubleStreamBlock, EmbedND, LastLayer, MLPEmbedder, RopePe, SingleStreamBlock } from './dit-blocks.js';
import { openDitWeights } from './diffusers-map.js';
export * from './dit-blocks.js';
export type { DitLoadOptions } from './dit-config.js';

// ---- the whole model ------------------------------------------------------------------------------

/** What one Step1XEdit.forward takes (the official argument list); host arrays, B rows each. */
export interface DitInputs {
  img: Float32Array; // [B, L, in_channels] packed tokens (noise half, then reference half)
  imgIds: Float32Array; // [B, L, 3]
  txtIds: Float32Array; // [B, T, 3]
  timesteps: ArrayLike<number>; // [B] t in [0, 1] (features of t·1000)
  llmEmbedding: Float32Array; // [B, T, Cin]
  tVec: ArrayLike<number>; // [B] for the connector (it multiplies by 1000 itself)
  mask: Float32Array; // [B, T] 0/1
  /** v1.2: text_mask · text_token_mapping(text embeddings) [B, T, connector hidden], added to the connector output (textTokenMapping) */
  contextAdd?: Float32Array;
  B: number;
  L: number;
  T: number;
  /** Precomputed rope table of cat(txt_ids, img_ids) (a predictor reuses it across steps). */
  pe?: RopePe;
  /** The edit's text conditioning, computed once (prepareText; a predictor reuses it across steps). */
  text?: PreparedText;
  /** Block skipping across the forwards of one denoise run (TeaCache, src/pipeline/teacache.ts). */
  cache?: BlockCacheState;
}

/** The edit's text conditioning on the GPU (Step1XEdit.prepareText): the connector's constants and vector_in(y). */
export interface PreparedText {
  connector: ConnectorText;
  /** vector_in(y) [B, H] */
  vIn: Tensor;
  dispose(): void;
}

/** Decides per forward whether the transformer blocks run, from tracked = img_norm1(img_in(img)) [B, L, H]. */
export interface BlockCache {
  decide(tracked: Float32Array): boolean;
}

/** A BlockCache plus the residual (last single block's image tokens − img_in output) of the last run. */
export interface BlockCacheState {
  policy: BlockCache;
  residual?: Tensor;
  /** Set by every forward: whether it skipped the blocks. */
  skipped?: boolean;
}

type Block = DoubleStreamBlock | SingleStreamBlock;

/** The velocity of all image tokens at time t (structurally pipeline/sampling's `Predictor`). */
export interface DitPredictor {
  predict(img: Float32Array, batch: number, t: number): Promise<Float32Array>;
  dispose(): void;
}

export class Step1XEdit extends Module {
  readonly img_in: Linear;
  readonly time_in: MLPEmbedder;
  readonly vector_in: MLPEmbedder;
  readonly txt_in: Linear;
  /** Loaded when resident; streamed ones are loaded for one forward at a time (nn/block-stream.ts). */
  readonly double_blocks: DoubleStreamBlock[];
  readonly single_blocks: SingleStreamBlock[];
  readonly final_layer: LastLayer;
  readonly connector: Qwen2Connector;
  /** v1.2 only (enable_text_token_mapping): Linear(connector in → connector hidden) */
  readonly text_token_mapping: Linear | undefined;
  readonly pe_embedder: EmbedND;
  readonly cfg: DitParams;
  /** Set by `load`. */
  private g!: Gpu;
  private ckpt!: Checkpoint;
  private slots!: Slot[];
  /** All blocks in execution order on the shared streaming engine (nn/block-stream.ts). */
  private blocks!: BlockStream<Block>;
  /** Set by `open`: close() also closes the checkpoint. */
  private ownsCheckpoint = false;

  /** The declared model of a config: its keys (expectedDitKeys), shapes and byte counts; `load` fills it. */
  constructor(c: Step1xConfig) {
    super();
    const d = (this.cfg = c.dit), H = d.hidden_size;
    this.img_in = new Linear(H, d.in_channels);
    this.time_in = new MLPEmbedder(TIME_FREQ_DIM, H);
    this.vector_in = new MLPEmbedder(d.vec_in_dim, H);
    this.txt_in = new Linear(H, d.context_in_dim);
    this.double_blocks = Array.from({ length: d.depth }, () => new DoubleStreamBlock(d));
    this.single_blocks = Array.from({ length: d.depth_single_blocks }, () => new SingleStreamBlock(d));
    this.final_layer = new LastLayer(H, d.out_channels);
    this.connector = new Qwen2Connector(c.connector, c.version);
    // v1.2: context += text_mask · Linear(text embeddings) (the fork hard-codes 3584 → 4096 = connector in → hidden)
    this.text_token_mapping = c.version === 'v1.2' ? new Linear(c.connector.hidden_size, c.connector.in_channels) : undefined;
    this.pe_embedder = new EmbedND(d.axes_dim, d.theta);
  }

  /** v1.0, v1.1 or v1.2, as the weights tell (connector.scale_factor present, text_token_mapping present, neither). */
  get version(): DitVersion {
    return this.text_token_mapping ? 'v1.2' : this.connector.scale_factor === undefined ? 'v1.1' : 'v1.0';
  }

  /**
   * v1.2's text token mapping: text_mask · Linear(text_embeds) [B, T, connector hidden] on the host. It
   * does not depend on t, so a denoise run computes it once and passes it as DitInputs.contextAdd.
   * text_embeds [B, T, Cin] are Qwen's embed_tokens rows (vision features on image tokens); text_mask [B, T] 0/1.
   */
  async textTokenMapping(textEmbeds: Float32Array, textMask: ArrayLike<number>, B: number, T: number): Promise<Float32Array> {
    const lin = this.text_token_mapping, g = this.g;
    if (!lin) fail(`dit: the weights have no text_token_mapping (a ${this.version} model); only v1.2 maps text tokens`);
    const Cin = lin.inFeatures, CH = lin.outFeatures;
    if (textEmbeds.length !== B * T * Cin || textMask.length !== B * T) fail(`dit: text_embeds / text_mask must be [${B},${T},${Cin}] / [${B},${T}]`);
    const out = await g.scopeAsync(() => g.readF32(lin.forward(g.upload(textEmbeds, [B, T, Cin]))));
    for (let r = 0; r < B * T; r++) if (!textMask[r]) out.fill(0, r * CH, (r + 1) * CH);
    return out;
  }

  get streamedBlocks(): number {
    return this.blocks.streamedCount;
  }

  /**
   * Load from a checkpoint whose keys were checked against expectedDitKeys(cfg). With a budget, the
   * first blocks in execution order stay resident while they fit next to the non-block weights, the
   * activation reserve and room for two streamed blocks of each kind (current + read-ahead; dit-config.ts streamReserve).
   */
  static async load(g: Gpu, ckpt: Checkpoint, cfg: Step1xConfig, opts: DitLoadOptions = {}): Promise<Step1XEdit> {
    if (opts.weights) ckpt = withWeightPolicy(ckpt, ditWeightPolicy(opts.weights)); // streamed blocks load under it too
    const m = new Step1XEdit(cfg);
    const plan = planResidency(ckpt, cfg.dit, opts);
    const all: Block[] = [...m.double_blocks, ...m.single_blocks];
    [m.g, m.ckpt, m.slots] = [g, ckpt, plan.slots];
    m.blocks = new BlockStream<Block>(all.length, (j) => all[j].load(g, ckpt, plan.slots[j].prefix.slice(0, -1)), (j) => plan.resident.has(j));
    try {
      for (const [name, child] of m.children()) if (!/^(double|single)_blocks\./.test(name)) await child.load(g, ckpt, name);
      await m.blocks.preload();
    } catch (e) {
      m.dispose(); // on a failure part-way (bad tensor, out of memory) free what was already uploaded
      throw e;
    }
    return m;
  }

  /**
   * Open a DiT checkpoint (file or directory), size the model from its shapes plus `hparams`
   * (step1x.json's `dit` / `connector`; absent for the real model), check the key set (every missing,
   * unexpected or mis-shaped tensor named), and load it under `opts` (budget / streaming).
   */
  static async open(g: Gpu, path: string, hparams: DitHparams = {}, opts: DitLoadOptions = {}): Promise<Step1XEdit> {
    const { ckpt, cfg } = await openDitWeights(path, hparams); // official file or diffusers transformer/
    try {
      const m = await Step1XEdit.load(g, ckpt, cfg, opts);
      m.ownsCheckpoint = true;
      return m;
    } catch (e) {
      await ckpt.close();
      throw e;
    }
  }

  /** Rope table of ids = cat(txt_ids, img_ids) [B, T+L, 3] (host ids returned for `mid.ids`). */
  ropeFor(txtIds: Float32Array, imgIds: Float32Array, B: number, T: number, L: number): { pe: RopePe; ids: Float32Array } {
    const ids = new Float32Array(B * (T + L) * 3);
    for (let b = 0; b < B; b++) {
      ids.set(txtIds.subarray(b * T * 3, (b + 1) * T * 3), b * (T + L) * 3);
      ids.set(imgIds.subarray(b * L * 3, (b + 1) * L * 3), (b * (T + L) + T) * 3);
    }
    const hd = this.cfg.hidden_size / this.cfg.num_heads;
    return { pe: RopePe.build(this.g, this.pe_embedder.table(ids, B, T + L), B, T + L, hd), ids };
  }

  /** `Step1XEdit.forward` → pred [B, L, out_channels] (velocity of ALL image tokens); the caller's tensor. */
  async forward(x: DitInputs, tap?: Tap): Promise<Tensor> {
    const g = this.g, cfg = this.cfg, { B, L, T } = x, H = cfg.hidden_size;
    if (x.img.length !== B * L * cfg.in_channels) fail(`dit: img has ${x.img.length} values, expected [${B},${L},${cfg.in_channels}]`);
    if (x.imgIds.length !== B * L * 3 || x.txtIds.length !== B * T * 3) fail(`dit: img_ids / txt_ids must be [${B},${L},3] / [${B},${T},3]`);
    if (x.timesteps.length !== B) fail(`dit: timesteps has ${x.timesteps.length} values, expected ${B}`);
    return g.scopeAsync(async () => {
      const conn = await this.connector.forward(g, x.text?.connector ?? x.llmEmbedding, x.tVec, x.mask, B, T, tap);
      let ctxt = conn.txt;
      if (x.contextAdd) {
        // v1.2: context = connector(embeds) + text_mask · text_token_mapping(text_embeds)
        ctxt = add(ctxt, g.upload(x.contextAdd, [...ctxt.shape]));
        await tap?.('mid.context_in', ctxt, [...ctxt.shape]);
      }
      const img = this.img_in.forward(g.upload(x.img, [B, L, cfg.in_channels])); // [B, L, H]
      await tap?.('mid.img_embed', img, [B, L, H]);
      const tfHost = timestepEmbedding(x.timesteps, TIME_FREQ_DIM, 10000, 1000);
      await tap?.('mid.time_freq', tfHost, [B, TIME_FREQ_DIM]);
      const tEmb = this.time_in.forward(g.upload(tfHost, [B, TIME_FREQ_DIM])); // [B, H]
      await tap?.('mid.time_in', tEmb, [B, H]);
      const vIn = x.text ? x.text.vIn.reshape(x.text.vIn.shape) : this.vector_in.forward(conn.y);
      await tap?.('mid.vector_in', vIn, [B, H]);
      const vec = add(tEmb, vIn);
      await tap?.('mid.vec', vec, [B, H]);
      const siluVec = silu(vec); // every Modulation / adaLN applies SiLU(vec) first
      const txt = this.txt_in.forward(ctxt); // [B, T, H]
      await tap?.('mid.txt_embed', txt, [B, T, H]);
      // TeaCache: decide from double_blocks[0].img_norm1(img_in(img)) (LayerNorm, no affine, no modulation)
      if (x.cache) {
        const run = x.cache.policy.decide(await g.readF32(layerNorm(img, undefined, undefined, 1e-6)));
        x.cache.skipped = !run && x.cache.residual !== undefined;
        if (x.cache.skipped) return this.final_layer.forward(add(img, x.cache.residual!), siluVec);
      }
      let pe = x.pe;
      if (!pe) {
        const r = this.ropeFor(x.txtIds, x.imgIds, B, T, L);
        pe = r.pe;
        await tap?.('mid.ids', r.ids, [B, T + L, 3]);
        await tap?.('mid.pe', pe.pe, [B, 1, T + L, cfg.axes_dim.reduce((a, b) => a + b, 0) / 2, 2, 2]);
      }
      const rope = pe;
      // The blocks, streaming the non-resident ones with one block of read-ahead; the residual streams are
      // the carry, each replaced one freed as soon as the next exists (img_in's output kept for TeaCache).
      const out = await this.blocks.scan(g, [img, txt], async (blk, j, [a, b]) => {
        const slot = this.slots[j];
        if (blk instanceof DoubleStreamBlock) {
          const [img2, txt2] = blk.forward(a, b, siluVec, rope);
          await tap?.(`mid.double${slot.i}.img`, img2, [B, L, H]);
          await tap?.(`mid.double${slot.i}.txt`, txt2, [B, T, H]);
          return [img2, txt2];
        }
        const joint = blk.forward(b ? concat([b, a], 1) : a, siluVec, rope); // [B, T+L, H]: text first
        await tap?.(`mid.single${slot.i}.x`, joint, [B, T + L, H]);
        return [joint];
      }, { keep: x.cache ? [img] : [] });
      const imgOut = out.length === 1 ? slice(out[0], 1, T, L) : out[0];
      if (x.cache) x.cache.residual = hold(x.cache.residual, sub(imgOut, img));
      await tap?.('mid.final.in', imgOut, [B, L, H]);
      return this.final_layer.forward(imgOut, siluVec); // [B, L, out]
    });
  }

  /** The per-edit text conditioning (connector.prepare, then vector_in(y)) of B rows, for DitInputs.text; kept until its dispose(). */
  async prepareText(llmEmbedding: Float32Array, mask: Float32Array, B: number, T: number): Promise<PreparedText> {
    const connector = await this.connector.prepare(this.g, llmEmbedding, mask, B, T);
    const vIn = this.vector_in.forward(connector.y);
    for (const t of [...connector.tensors, vIn]) this.g.keep(t);
    return {
      connector,
      vIn,
      dispose: () => {
        connector.dispose();
        vIn.dispose();
      },
    };
  }

  /**
   * A sampling.Predictor over fixed conditioning (rows: cond, uncond). The rope table is built once;
   * a batch of 1 (no CFG) uses the first row.
   */
  predictor(c: { llmEmbedding: Float32Array; mask: Float32Array; imgIds: Float32Array; txtIds: Float32Array; T: number; L: number; cache?: BlockCache; contextAdd?: Float32Array }): DitPredictor & { cacheState?: BlockCacheState } {
    const { T, L } = c, g = this.g;
    const cacheState: BlockCacheState | undefined = c.cache ? { policy: c.cache } : undefined;
    const { pe } = g.untracked(() => this.ropeFor(c.txtIds.subarray(0, T * 3), c.imgIds.subarray(0, L * 3), 1, T, L));
    const Cin = c.llmEmbedding.length / (c.mask.length / T) / T;
    const texts = new Map<number, PreparedText>(); // per batch size (cond + uncond, or one row)
    return {
      predict: async (img: Float32Array, B: number, t: number): Promise<Float32Array> => {
        const rowsIds = (a: Float32Array, n: number) => a.subarray(0, B * n * 3);
        const tv = new Array<number>(B).fill(t);
        const llmEmbedding = c.llmEmbedding.subarray(0, B * T * Cin), mask = c.mask.subarray(0, B * T);
        let text = texts.get(B);
        if (!text) texts.set(B, (text = await this.prepareText(llmEmbedding, mask, B, T)));
        const inputs: DitInputs = {
          img, imgIds: rowsIds(c.imgIds, L), txtIds: rowsIds(c.txtIds, T), timesteps: tv, tVec: tv,
          llmEmbedding, mask, B, L, T, pe, cache: cacheState, text,
          ...(c.contextAdd ? { contextAdd: c.contextAdd.subarray(0, (c.contextAdd.length / (c.mask.length / T)) * B) } : {}),
        };
        // f16 activation storage where the device can, the step redone in f32 on an f16 overflow (ops/act-dtype.ts);
        // TeaCache's state advances with every forward, so cached runs keep f32 storage
        if (cacheState) return g.scopeAsync(async () => g.readF32(await this.forward(inputs)));
        return withF16Redo(g, 'DiT step', () => this.forward(inputs));
      },
      cacheState,
      dispose: () => {
        pe.dispose();
        for (const t of texts.values()) t.dispose();
        texts.clear();
        cacheState?.residual?.dispose();
      },
    };
  }

  /** Free the resident weights and any read-ahead block. */
  override dispose(): void {
    super.dispose();
    void this.blocks?.dispose(); // resident blocks are freed synchronously
  }

  /** dispose(), and close the checkpoint when `open` opened it. */
  async close(): Promise<void> {
    this.dispose();
    if (this.ownsCheckpoint) await this.ckpt.close();
  }
}

/** Every tensor name → shape of `Step1XEdit.state_dict()` for this config, derived from the declared modules. */
export function ditKeys(c: Step1xConfig): Map<string, number[]> {
  return new Step1XEdit(c).expectedKeys();
}

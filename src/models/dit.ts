/**
 * Step1XEdit blocks (modules/layers.py, FLUX geometry). Field names mirror the checkpoint keys.
 * H = hidden, M = int(H·mlp_ratio), heads × hd = H, T text tokens, L image tokens (2N: noise + ref).
 *
 *   Modulation: lin(SiLU(vec)) [B, 6H | 3H] chunked (shift, scale, gate)[, (shift, scale, gate)]
 *   DoubleStreamBlock: per stream LN(no affine) → (1+scale)x+shift → qkv → RMS q/k norm (f32, eps 1e-6);
 *     joint attention over cat(txt, img) with RoPE and NO mask; x += gate·proj; x += gate·MLP(GELU-tanh)
 *   SingleStreamBlock: linear1 → [qkv 3H | mlp M]; out = linear2(cat(attn, GELU-tanh(mlp))); x += gate·out
 *   LastLayer: (shift, scale) = adaLN_modulation.1(SiLU(vec)).chunk(2)  — shift FIRST; linear
 *   EmbedND: per axis rope(ids[..., i], axes_dim[i], theta), interleaved-pair 2×2 rotation matrices
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import { Checkpoint, checkKeys } from '../io/checkpoint.js';
import { Linear } from '../nn/linear.js';
import { loadWeight } from '../nn/weights.js';
import { layerNorm, rmsNorm, modulate, gatedResidual } from '../ops/norm.js';
import { silu, add } from '../ops/elementwise.js';
import { linear } from '../ops/linear.js';
import { concat, slice } from '../ops/layout.js';
import { attention } from '../ops/attention.js';
import { applyRopeFlux } from '../ops/rope.js';
import { fluxPe } from '../ops/rope-tables.js';
import { chunkLastDim, Qwen2Connector, timestepEmbedding, type Tap } from './connector.js';
import { configFromCheckpoint, expectedDitKeys, mlpHidden, planResidency, TIME_FREQ_DIM, type DitLoadOptions, type DitParams, type Slot, type Step1xConfig } from './dit-config.js';
import type { Predictor } from '../pipeline/sampling.js';
export type { DitLoadOptions } from './dit-config.js';
import { ExitCode, Step1xError, fail } from '../errors.js';

const disposeAll = (...ts: (Tensor | undefined)[]): void => ts.forEach((t) => t?.dispose());

/** `MLPEmbedder`: out_layer(SiLU(in_layer(x))). */
export class MLPEmbedder {
  constructor(
    readonly in_layer: Linear,
    readonly out_layer: Linear,
  ) {}
  static async load(g: Gpu, ckpt: Checkpoint, p: string): Promise<MLPEmbedder> {
    return new MLPEmbedder(await Linear.load(g, ckpt, `${p}.in_layer`), await Linear.load(g, ckpt, `${p}.out_layer`));
  }
  forward(x: Tensor): Tensor {
    const h = this.in_layer.forward(x, 'silu');
    const y = this.out_layer.forward(h);
    h.dispose();
    return y;
  }
  dispose(): void {
    this.in_layer.dispose();
    this.out_layer.dispose();
  }
}

/**
 * `EmbedND` + `rope()`: ids [B, L, 3] (host) → pe [B, L, hd/2, 2, 2], per axis i the frequencies
 * ω_k = θ^(−2k/d_i) of axes_dim[i] = d_i, entries [[cos, −sin], [sin, cos]](id·ω_k), axes concatenated
 * along hd/2; f64 math rounded to f32 like the official rope() (ops/rope-tables.ts fluxPe).
 */
export class EmbedND {
  constructor(
    readonly axes_dim: number[],
    readonly theta: number,
  ) {}
  table(ids: Float32Array, B: number, L: number): Float32Array {
    return fluxPe(ids, B, L, this.axes_dim, this.theta);
  }
}

/**
 * The rope table of one joint sequence on the GPU, [B|1, L, hd/2, 2, 2] (golden `mid.pe`), applied
 * to q or k [B, L, heads, hd] by the fused FLUX apply_rope kernel (interleaved pairs; token-chunked
 * by the op when over the binding limit). A batch-1 table is broadcast over the batch.
 */
export class RopePe {
  private constructor(readonly pe: Tensor) {}

  static build(g: Gpu, table: Float32Array, Bp: number, L: number, hd: number): RopePe {
    return new RopePe(g.upload(table, [Bp, L, hd / 2, 2, 2]));
  }

  apply(x: Tensor): Tensor {
    return applyRopeFlux(x, this.pe);
  }

  dispose(): void {
    this.pe.dispose();
  }
}

/** `QKNorm`: RMSNorm over hd of q and k (scale [hd]). */
export interface QKNorm {
  query_norm: { scale: Tensor };
  key_norm: { scale: Tensor };
}

async function loadQKNorm(g: Gpu, ckpt: Checkpoint, p: string): Promise<QKNorm> {
  return {
    query_norm: { scale: await loadWeight(g, ckpt, `${p}.query_norm.scale`) },
    key_norm: { scale: await loadWeight(g, ckpt, `${p}.key_norm.scale`) },
  };
}

/**
 * Output rows [start, start+count) of a Linear: a GEMM over row views of weight and bias, identical to
 * slicing the full output but without materialising it (fused qkv / linear1 projections).
 */
export function linearRows(x: Tensor, lin: Linear, start: number, count: number, act?: 'gelu_tanh' | 'silu'): Tensor {
  const w = lin.weight.rows(start, count);
  const b = lin.bias?.rows(start, count);
  const y = linear(x, w, b, act ? { act } : {});
  disposeAll(w, b);
  return y;
}

/** x [B, L, C] through a fused qkv Linear [3H, C] → q, k (RMS-normed over hd), v as [B, L, heads, hd]. */
function projectQkv(x: Tensor, qkv: Linear, H: number, heads: number, norm: QKNorm): [Tensor, Tensor, Tensor] {
  const [B, L] = x.shape, hd = H / heads;
  // "B L (K H D) -> K B L H D": rows [0,H) = q, [H,2H) = k, [2H,3H) = v
  const [q0, k0, v0] = [0, 1, 2].map((i) => {
    const t = linearRows(x, qkv, i * H, H);
    const r = t.reshape([B, L, heads, hd]);
    t.dispose();
    return r;
  });
  const q = rmsNorm(q0, norm.query_norm.scale, 1e-6);
  const k = rmsNorm(k0, norm.key_norm.scale, 1e-6);
  disposeAll(q0, k0);
  return [q, k, v0];
}

/** RoPE on q, k then unmasked attention: [B, L, heads, hd] ×3, pe [B, L, hd/2, 2, 2] → [B, L, H]. */
function attendRope(q: Tensor, k: Tensor, v: Tensor, pe: RopePe): Tensor {
  const [B, L, heads, hd] = q.shape;
  const qr = pe.apply(q);
  const kr = pe.apply(k);
  const o = attention(qr, kr, v); // softmax scale 1/sqrt(hd) (SDPA default)
  disposeAll(qr, kr);
  const o2 = o.reshape([B, L, heads * hd]);
  o.dispose();
  return o2;
}

/** A stream of the double block: `{img,txt}_mod`, `{img,txt}_attn`, `{img,txt}_mlp`. */
export interface StreamWeights {
  mod: { lin: Linear };
  attn: { qkv: Linear; norm: QKNorm; proj: Linear };
  mlp: [Linear, Linear]; // mlp.0 (→ GELU-tanh) and mlp.2
}

async function loadStream(g: Gpu, ckpt: Checkpoint, p: string, s: 'img' | 'txt'): Promise<StreamWeights> {
  return {
    mod: { lin: await Linear.load(g, ckpt, `${p}.${s}_mod.lin`) },
    attn: {
      qkv: await Linear.load(g, ckpt, `${p}.${s}_attn.qkv`),
      norm: await loadQKNorm(g, ckpt, `${p}.${s}_attn.norm`),
      proj: await Linear.load(g, ckpt, `${p}.${s}_attn.proj`),
    },
    mlp: [await Linear.load(g, ckpt, `${p}.${s}_mlp.0`), await Linear.load(g, ckpt, `${p}.${s}_mlp.2`)],
  };
}

function disposeStream(s: StreamWeights): void {
  s.mod.lin.dispose();
  s.attn.qkv.dispose();
  s.attn.proj.dispose();
  disposeAll(s.attn.norm.query_norm.scale, s.attn.norm.key_norm.scale);
  s.mlp.forEach((l) => l.dispose());
}

export class DoubleStreamBlock {
  constructor(
    readonly heads: number,
    readonly img: StreamWeights,
    readonly txt: StreamWeights,
  ) {}

  static async load(g: Gpu, ckpt: Checkpoint, p: string, cfg: DitParams): Promise<DoubleStreamBlock> {
    return new DoubleStreamBlock(cfg.num_heads, await loadStream(g, ckpt, p, 'img'), await loadStream(g, ckpt, p, 'txt'));
  }

  /** img [B, L, H], txt [B, T, H], siluVec [B, H], pe [B, T+L, hd/2, 2, 2] → new img, txt. */
  forward(img: Tensor, txt: Tensor, siluVec: Tensor, pe: RopePe): [Tensor, Tensor] {
    const T = txt.shape[1];
    const L = img.shape[1];
    // Modulation chunk order: shift1, scale1, gate1, shift2, scale2, gate2 — each [B, H]
    const im = this.img.mod.lin.forward(siluVec);
    const tm = this.txt.mod.lin.forward(siluVec);
    const [iSh1, iSc1, iG1, iSh2, iSc2, iG2] = chunkLastDim(im, 6);
    const [tSh1, tSc1, tG1, tSh2, tSc2, tG2] = chunkLastDim(tm, 6);
    disposeAll(im, tm);
    const pre = (x: Tensor, s: StreamWeights, sh: Tensor, sc: Tensor) => {
      const n = layerNorm(x, undefined, undefined, 1e-6);
      const m = modulate(n, sh, sc);
      n.dispose();
      const r = projectQkv(m, s.attn.qkv, x.shape[2], this.heads, s.attn.norm);
      m.dispose();
      return r;
    };
    const [iq, ik, iv] = pre(img, this.img, iSh1, iSc1);
    const [tq, tk, tv] = pre(txt, this.txt, tSh1, tSc1);
    // joint sequence: text first, then image; [B, T+L, heads, hd]
    const q = concat([tq, iq], 1), k = concat([tk, ik], 1), v = concat([tv, iv], 1);
    disposeAll(iq, ik, iv, tq, tk, tv);
    const attn = attendRope(q, k, v, pe); // [B, T+L, H]
    disposeAll(q, k, v);
    const tAttn = slice(attn, 1, 0, T), iAttn = slice(attn, 1, T, L);
    attn.dispose();
    const post = (x: Tensor, a: Tensor, s: StreamWeights, g1: Tensor, sh2: Tensor, sc2: Tensor, g2: Tensor) => {
      const p = s.attn.proj.forward(a);
      const x1 = gatedResidual(x, g1, p);
      p.dispose();
      const n = layerNorm(x1, undefined, undefined, 1e-6);
      const m = modulate(n, sh2, sc2);
      n.dispose();
      const h = s.mlp[0].forward(m, 'gelu_tanh'); // [B, *, M]
      m.dispose();
      const o = s.mlp[1].forward(h);
      h.dispose();
      const x2 = gatedResidual(x1, g2, o);
      disposeAll(o, x1);
      return x2;
    };
    const img2 = post(img, iAttn, this.img, iG1, iSh2, iSc2, iG2);
    const txt2 = post(txt, tAttn, this.txt, tG1, tSh2, tSc2, tG2);
    disposeAll(iAttn, tAttn, iSh1, iSc1, iG1, iSh2, iSc2, iG2, tSh1, tSc1, tG1, tSh2, tSc2, tG2);
    return [img2, txt2];
  }

  dispose(): void {
    disposeStream(this.img);
    disposeStream(this.txt);
  }
}

export class SingleStreamBlock {
  constructor(
    readonly heads: number,
    readonly mlpHidden: number,
    readonly linear1: Linear, // [3H + M, H]
    readonly linear2: Linear, // [H, H + M]
    readonly norm: QKNorm,
    readonly modulation: { lin: Linear }, // [3H, H]
  ) {}

  static async load(g: Gpu, ckpt: Checkpoint, p: string, cfg: DitParams): Promise<SingleStreamBlock> {
    return new SingleStreamBlock(
      cfg.num_heads,
      mlpHidden(cfg.hidden_size, cfg.mlp_ratio),
      await Linear.load(g, ckpt, `${p}.linear1`),
      await Linear.load(g, ckpt, `${p}.linear2`),
      await loadQKNorm(g, ckpt, `${p}.norm`),
      { lin: await Linear.load(g, ckpt, `${p}.modulation.lin`) },
    );
  }

  /** x [B, T+L, H] (txt then img), siluVec [B, H], pe → [B, T+L, H]. */
  forward(x: Tensor, siluVec: Tensor, pe: RopePe): Tensor {
    const H = x.shape[2], M = this.mlpHidden;
    const mod = this.modulation.lin.forward(siluVec); // [B, 3H]
    const [shift, scale, gate] = chunkLastDim(mod, 3);
    mod.dispose();
    const n = layerNorm(x, undefined, undefined, 1e-6);
    const xm = modulate(n, shift, scale);
    n.dispose();
    // linear1 = [q | k | v | mlp] by output rows, run as GEMMs over row views of its weight: the
    // same dot products without the [B, T+L, 3H+M] buffer (1.5 GB at 1024²) and its slices.
    const [q, k, v] = projectQkv(xm, this.linear1, H, this.heads, this.norm);
    const act = linearRows(xm, this.linear1, 3 * H, M, 'gelu_tanh'); // [B, T+L, M] = GELU-tanh(mlp)
    xm.dispose();
    const attn = attendRope(q, k, v, pe); // [B, T+L, H]
    disposeAll(q, k, v);
    const cat = concat([attn, act], 2); // [B, T+L, H + M]
    disposeAll(attn, act);
    const out = this.linear2.forward(cat); // [B, T+L, H]
    cat.dispose();
    const y = gatedResidual(x, gate, out);
    disposeAll(out, shift, scale, gate);
    return y;
  }

  dispose(): void {
    this.linear1.dispose();
    this.linear2.dispose();
    disposeAll(this.norm.query_norm.scale, this.norm.key_norm.scale);
    this.modulation.lin.dispose();
  }
}

export class LastLayer {
  constructor(
    readonly linear: Linear,
    readonly adaLN_modulation: Linear, // adaLN_modulation.1 (after SiLU)
  ) {}
  static async load(g: Gpu, ckpt: Checkpoint, p: string): Promise<LastLayer> {
    return new LastLayer(await Linear.load(g, ckpt, `${p}.linear`), await Linear.load(g, ckpt, `${p}.adaLN_modulation.1`));
  }
  /** x [B, L, H], siluVec [B, H] → [B, L, out_channels]. Chunk order: shift THEN scale. */
  forward(x: Tensor, siluVec: Tensor): Tensor {
    const mod = this.adaLN_modulation.forward(siluVec); // [B, 2H]
    const [shift, scale] = chunkLastDim(mod, 2);
    mod.dispose();
    const n = layerNorm(x, undefined, undefined, 1e-6);
    const m = modulate(n, shift, scale);
    disposeAll(n, shift, scale);
    const y = this.linear.forward(m);
    m.dispose();
    return y;
  }
  dispose(): void {
    this.linear.dispose();
    this.adaLN_modulation.dispose();
  }
}

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
  B: number;
  L: number;
  T: number;
  /** Precomputed rope table of cat(txt_ids, img_ids) (a predictor reuses it across steps). */
  pe?: RopePe;
}

type Block = DoubleStreamBlock | SingleStreamBlock;

export class Step1XEdit {
  /** Blocks kept on the GPU; undefined entries are streamed from `ckpt` on every forward. */
  readonly double_blocks: (DoubleStreamBlock | undefined)[];
  readonly single_blocks: (SingleStreamBlock | undefined)[];
  readonly pe_embedder: EmbedND;
  /** Set by `open`: close() also closes the checkpoint. */
  private ownsCheckpoint = false;

  private constructor(
    readonly g: Gpu,
    readonly ckpt: Checkpoint,
    readonly cfg: DitParams,
    readonly img_in: Linear,
    readonly time_in: MLPEmbedder,
    readonly vector_in: MLPEmbedder,
    readonly txt_in: Linear,
    readonly final_layer: LastLayer,
    readonly connector: Qwen2Connector,
    private readonly slots: Slot[],
    resident: Map<number, Block>,
  ) {
    this.pe_embedder = new EmbedND(cfg.axes_dim, cfg.theta);
    this.double_blocks = slots.filter((s) => s.kind === 'double').map((_, j) => resident.get(j) as DoubleStreamBlock | undefined);
    this.single_blocks = slots.filter((s) => s.kind === 'single').map((_, j) => resident.get(cfg.depth + j) as SingleStreamBlock | undefined);
  }

  get streamedBlocks(): number {
    return this.double_blocks.filter((b) => !b).length + this.single_blocks.filter((b) => !b).length;
  }

  /**
   * Load from a checkpoint whose keys were checked against expectedDitKeys(cfg). With a budget, the
   * first blocks in execution order stay resident while they fit next to the non-block weights, the
   * activation reserve and room for two streamed blocks (current + read-ahead).
   */
  static async load(g: Gpu, ckpt: Checkpoint, cfg: Step1xConfig, opts: DitLoadOptions = {}): Promise<Step1XEdit> {
    const d = cfg.dit;
    const plan = planResidency(ckpt, d, opts);
    const slots = plan.slots;
    const residentIdx = plan.resident;
    // on a failure part-way (bad tensor, out of memory) free what was already uploaded
    const loaded: { dispose(): void }[] = [];
    const keep = <T extends { dispose(): void }>(x: T): T => (loaded.push(x), x);
    try {
      const img_in = keep(await Linear.load(g, ckpt, 'img_in'));
      const time_in = keep(await MLPEmbedder.load(g, ckpt, 'time_in'));
      const vector_in = keep(await MLPEmbedder.load(g, ckpt, 'vector_in'));
      const txt_in = keep(await Linear.load(g, ckpt, 'txt_in'));
      const final_layer = keep(await LastLayer.load(g, ckpt, 'final_layer'));
      const connector = keep(await Qwen2Connector.load(g, ckpt, cfg.connector));
      const resident = new Map<number, Block>();
      for (const j of residentIdx) resident.set(j, keep(await loadSlot(g, ckpt, slots[j], d)));
      return new Step1XEdit(g, ckpt, d, img_in, time_in, vector_in, txt_in, final_layer, connector, slots, resident);
    } catch (e) {
      for (const x of loaded) x.dispose();
      throw e;
    }
  }

  /**
   * Open a DiT checkpoint (file or directory), size the model from its shapes plus `hparams`
   * (step1x.json's `dit` / `connector`; absent for the real model), check the key set (every missing,
   * unexpected or mis-shaped tensor named), and load it under `opts` (budget / streaming).
   */
  static async open(g: Gpu, path: string, hparams: { dit?: Record<string, unknown>; connector?: Record<string, unknown> } = {}, opts: DitLoadOptions = {}): Promise<Step1XEdit> {
    const ckpt = await Checkpoint.open(path);
    try {
      const cfg = configFromCheckpoint(ckpt.keys(), (n) => (ckpt.has(n) ? ckpt.info(n).shape : undefined), hparams, path);
      checkKeys(ckpt, expectedDitKeys(cfg), { what: 'DiT checkpoint' });
      const m = await Step1XEdit.load(g, ckpt, cfg, opts);
      m.ownsCheckpoint = true;
      return m;
    } catch (e) {
      await ckpt.close();
      throw e;
    }
  }

  private blockAt(j: number): Block | undefined {
    return j < this.cfg.depth ? this.double_blocks[j] : this.single_blocks[j - this.cfg.depth];
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

  /** `Step1XEdit.forward` → pred [B, L, out_channels] (velocity of ALL image tokens). */
  async forward(x: DitInputs, tap?: Tap): Promise<Tensor> {
    const g = this.g, cfg = this.cfg, { B, L, T } = x, H = cfg.hidden_size;
    if (x.img.length !== B * L * cfg.in_channels) fail(`dit: img has ${x.img.length} values, expected [${B},${L},${cfg.in_channels}]`);
    if (x.imgIds.length !== B * L * 3 || x.txtIds.length !== B * T * 3) fail(`dit: img_ids / txt_ids must be [${B},${L},3] / [${B},${T},3]`);
    if (x.timesteps.length !== B) fail(`dit: timesteps has ${x.timesteps.length} values, expected ${B}`);
    const { txt: ctxt, y } = await this.connector.forward(g, x.llmEmbedding, x.tVec, x.mask, B, T, tap);
    const imgIn = g.upload(x.img, [B, L, cfg.in_channels]);
    let img = this.img_in.forward(imgIn); // [B, L, H]
    imgIn.dispose();
    await tap?.('mid.img_embed', img, [B, L, H]);
    const tfHost = timestepEmbedding(x.timesteps, TIME_FREQ_DIM, 10000, 1000);
    await tap?.('mid.time_freq', tfHost, [B, TIME_FREQ_DIM]);
    const tf = g.upload(tfHost, [B, TIME_FREQ_DIM]);
    const tEmb = this.time_in.forward(tf); // [B, H]
    tf.dispose();
    await tap?.('mid.time_in', tEmb, [B, H]);
    const vIn = this.vector_in.forward(y);
    y.dispose();
    await tap?.('mid.vector_in', vIn, [B, H]);
    const vec = add(tEmb, vIn);
    disposeAll(tEmb, vIn);
    await tap?.('mid.vec', vec, [B, H]);
    const siluVec = silu(vec); // every Modulation / adaLN applies SiLU(vec) first
    vec.dispose();
    let txt = this.txt_in.forward(ctxt); // [B, T, H]
    ctxt.dispose();
    await tap?.('mid.txt_embed', txt, [B, T, H]);
    let pe = x.pe;
    if (!pe) {
      const r = this.ropeFor(x.txtIds, x.imgIds, B, T, L);
      pe = r.pe;
      await tap?.('mid.ids', r.ids, [B, T + L, 3]);
      await tap?.('mid.pe', pe.pe, [B, 1, T + L, cfg.axes_dim.reduce((a, b) => a + b, 0) / 2, 2, 2]);
    }
    // Blocks, streaming the non-resident ones with one block of read-ahead.
    const pending = new Map<number, Promise<Block>>();
    const nextStreamed = (j: number) => {
      for (let k = j + 1; k < this.slots.length; k++) if (!this.blockAt(k)) return k;
      return -1;
    };
    const fetch = (j: number) => {
      const p = loadSlot(g, this.ckpt, this.slots[j], cfg);
      p.catch(() => undefined); // awaited later; avoid an unhandled rejection meanwhile
      pending.set(j, p);
    };
    let joint: Tensor | undefined;
    try {
      for (let j = 0; j < this.slots.length; j++) {
        const res = this.blockAt(j);
        if (!res && !pending.has(j)) fetch(j);
        const blk = res ?? (await pending.get(j)!);
        pending.delete(j);
        const nx = nextStreamed(j);
        if (nx >= 0 && !pending.has(nx)) fetch(nx);
        const slot = this.slots[j];
        try {
          if (blk instanceof DoubleStreamBlock) {
            const [i2, t2] = blk.forward(img, txt, siluVec, pe);
            disposeAll(img, txt);
            img = i2;
            txt = t2;
            await tap?.(`mid.double${slot.i}.img`, img, [B, L, H]);
            await tap?.(`mid.double${slot.i}.txt`, txt, [B, T, H]);
          } else {
            if (!joint) {
              joint = concat([txt, img], 1); // [B, T+L, H]: text first
              disposeAll(txt, img);
            }
            const j2 = blk.forward(joint, siluVec, pe);
            joint.dispose();
            joint = j2;
            await tap?.(`mid.single${slot.i}.x`, joint, [B, T + L, H]);
          }
        } finally {
          if (!res) blk.dispose(); // commands using it are recorded; queue order protects reuse
        }
        g.flush(); // let the GPU run this block while the next one is read
      }
      let imgOut: Tensor;
      if (joint) {
        imgOut = slice(joint, 1, T, L);
        joint.dispose();
      } else {
        imgOut = img;
        txt.dispose();
      }
      await tap?.('mid.final.in', imgOut, [B, L, H]);
      const pred = this.final_layer.forward(imgOut, siluVec); // [B, L, out]
      disposeAll(imgOut, siluVec);
      if (!x.pe) pe.dispose();
      return pred;
    } catch (e) {
      for (const p of pending.values()) p.then((b) => b.dispose(), () => undefined);
      throw e;
    }
  }

  /**
   * A sampling.Predictor over fixed conditioning (rows: cond, uncond). The rope table is built once;
   * a batch of 1 (no CFG) uses the first row.
   */
  predictor(c: { llmEmbedding: Float32Array; mask: Float32Array; imgIds: Float32Array; txtIds: Float32Array; T: number; L: number }): Predictor & { dispose(): void } {
    const { T, L } = c;
    const { pe } = this.ropeFor(c.txtIds.subarray(0, T * 3), c.imgIds.subarray(0, L * 3), 1, T, L);
    const Cin = c.llmEmbedding.length / (c.mask.length / T) / T;
    return {
      predict: async (img: Float32Array, B: number, t: number): Promise<Float32Array> => {
        const rowsIds = (a: Float32Array, n: number) => a.subarray(0, B * n * 3);
        const tv = new Array<number>(B).fill(t);
        const out = await this.forward({
          img, imgIds: rowsIds(c.imgIds, L), txtIds: rowsIds(c.txtIds, T), timesteps: tv, tVec: tv,
          llmEmbedding: c.llmEmbedding.subarray(0, B * T * Cin), mask: c.mask.subarray(0, B * T), B, L, T, pe,
        });
        const host = await this.g.readF32(out);
        out.dispose();
        return host;
      },
      dispose: () => pe.dispose(),
    };
  }

  dispose(): void {
    this.img_in.dispose();
    this.time_in.dispose();
    this.vector_in.dispose();
    this.txt_in.dispose();
    this.final_layer.dispose();
    this.connector.dispose();
    for (const b of [...this.double_blocks, ...this.single_blocks]) b?.dispose();
  }

  /** dispose(), and close the checkpoint when `open` opened it. */
  async close(): Promise<void> {
    this.dispose();
    if (this.ownsCheckpoint) await this.ckpt.close();
  }
}

function loadSlot(g: Gpu, ckpt: Checkpoint, s: Slot, cfg: DitParams): Promise<Block> {
  const p = s.prefix.slice(0, -1);
  return s.kind === 'double' ? DoubleStreamBlock.load(g, ckpt, p, cfg) : SingleStreamBlock.load(g, ckpt, p, cfg);
}

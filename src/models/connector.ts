/**
 * Qwen2Connector (modules/connector_edit.py): turns the Qwen2.5-VL last hidden states
 * llm_embedding [B, T, Cin] (+ mask [B, T], t [B]) into the DiT's text tokens txt [B, T, CH] and the
 * global vector y [B, 768]. Stored under `connector.*` in the DiT checkpoint.
 *
 *   t ← t·1000 (the "times embedding bug" fix, done by Qwen2Connector itself)
 *   x_mean = masked_mean(x)·(1 + scale_factor) (v1.0; unscaled in v1.1)  → global_proj_out → y [B, 768]
 *   S = SingleTokenRefiner:
 *     c = t_embedder(t) + c_embedder(masked_mean(x))        (SiLU MLPs; mean NOT scaled here)
 *     x = input_embedder(x)
 *     IndividualTokenRefiner: depth × block(x, c, mask_i & mask_j with column 0 forced true)
 *   block: gate_msa, gate_mlp = Linear(SiLU(c)).chunk(2)       (gate-only adaLN, no shift/scale)
 *          x += gate_msa · proj(attn(LN1(x)))                  (no q/k norm)
 *          x += gate_mlp · fc2(SiLU(fc1(LN2(x))))
 * Masked means and the timestep features are computed on the host (tiny: B×T×Cin), in f64 then f32.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor } from '../runtime/tensor.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { Linear } from '../nn/linear.js';
import { loadWeight } from '../nn/weights.js';
import { linear } from '../ops/linear.js';
import { layerNorm, gatedResidual } from '../ops/norm.js';
import { silu, add } from '../ops/elementwise.js';
import { chunkLast } from '../ops/layout.js';
import { attention } from '../ops/attention.js';
import { fail, fmtShape } from '../errors.js';
import { CONNECTOR_GLOBAL_DIM, TIME_FREQ_DIM, type ConnectorParams, type DitVersion } from './dit-config.js';

const fr = Math.fround;

/** Intermediate-tensor callback (golden runner / debugging); the tensor is only valid during the call. */
export type Tap = (name: string, value: Tensor | Float32Array, shape: number[]) => Promise<void> | void;

/**
 * Sinusoidal features of `t·timeFactor` [B] → [B, dim] = cat(cos, sin), freqs exp(−ln(maxPeriod)·i/half)
 * (TimestepEmbedder.timestep_embedding / Step1XEdit.timestep_embedding), f32 like the reference.
 */
export function timestepEmbedding(t: ArrayLike<number>, dim = TIME_FREQ_DIM, maxPeriod = 10000, timeFactor = 1): Float32Array {
  const half = dim >> 1;
  const out = new Float32Array(t.length * dim);
  const lnp = fr(-Math.log(maxPeriod));
  for (let b = 0; b < t.length; b++) {
    const tb = fr(fr(t[b]) * fr(timeFactor));
    for (let i = 0; i < half; i++) {
      const f = fr(Math.exp(fr(fr(lnp * i) / half)));
      const a = fr(tb * f);
      out[b * dim + i] = Math.cos(a);
      out[b * dim + half + i] = Math.sin(a);
    }
  }
  return out;
}

/** Masked mean over tokens: x [B, T, C], mask [B, T] (0/1) → [B, C] = Σ x·m / Σ m (f64 sums, f32 result). */
export function maskedMean(x: Float32Array, mask: Float32Array, B: number, T: number, C: number): Float32Array {
  if (x.length !== B * T * C || mask.length !== B * T) fail(`maskedMean: x (${x.length}) / mask (${mask.length}) are not [${B},${T},${C}] / [${B},${T}]`);
  const out = new Float32Array(B * C);
  for (let b = 0; b < B; b++) {
    let ms = 0;
    const acc = new Float64Array(C);
    for (let t = 0; t < T; t++) {
      const m = mask[b * T + t];
      if (m === 0) continue;
      ms += m;
      const o = (b * T + t) * C;
      for (let c = 0; c < C; c++) acc[c] += fr(x[o + c] * m);
    }
    if (ms === 0) fail(`maskedMean: mask row ${b} is all zero (no valid text token)`);
    for (let c = 0; c < C; c++) out[b * C + c] = fr(fr(acc[c]) / ms);
  }
  return out;
}

/** Refiner self-attention mask [B, T, T] (1 = attend): mask_i & mask_j, then column 0 forced to 1. */
export function refinerAttnMask(mask: Float32Array, B: number, T: number): Float32Array {
  const out = new Float32Array(B * T * T);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < T; i++)
      for (let j = 0; j < T; j++) out[(b * T + i) * T + j] = j === 0 || (mask[b * T + i] !== 0 && mask[b * T + j] !== 0) ? 1 : 0;
  return out;
}

/** Split a fused projection [B, L, k·C] into k contiguous [B, L, C] parts (torch `.chunk(k, -1)`). */
export const chunkLastDim = (x: Tensor, k: number): Tensor[] => chunkLast(x, k);

/** Two-layer MLP `out(act(in(x)))` with the activation fused into the first GEMM. */
export class SiluMlp {
  constructor(
    readonly l1: Linear,
    readonly l2: Linear,
  ) {}
  forward(x: Tensor): Tensor {
    const h = this.l1.forward(x, 'silu');
    const y = this.l2.forward(h);
    h.dispose();
    return y;
  }
  dispose(): void {
    this.l1.dispose();
    this.l2.dispose();
  }
}

/** IndividualTokenRefinerBlock: `connector.S.individual_token_refiner.blocks.{i}`. */
export class IndividualTokenRefinerBlock {
  constructor(
    readonly heads: number,
    readonly norm1: { weight: Tensor; bias: Tensor },
    readonly self_attn_qkv: Linear,
    readonly self_attn_proj: Linear,
    readonly norm2: { weight: Tensor; bias: Tensor },
    readonly mlp: SiluMlp, // mlp.fc1 → SiLU → mlp.fc2
    readonly adaLN_modulation: Linear, // adaLN_modulation.1 (after SiLU)
  ) {}

  static async load(g: Gpu, ckpt: Checkpoint, p: string, heads: number): Promise<IndividualTokenRefinerBlock> {
    const w = (n: string) => loadWeight(g, ckpt, `${p}.${n}`);
    return new IndividualTokenRefinerBlock(
      heads,
      { weight: await w('norm1.weight'), bias: await w('norm1.bias') },
      await Linear.load(g, ckpt, `${p}.self_attn_qkv`),
      await Linear.load(g, ckpt, `${p}.self_attn_proj`),
      { weight: await w('norm2.weight'), bias: await w('norm2.bias') },
      new SiluMlp(await Linear.load(g, ckpt, `${p}.mlp.fc1`), await Linear.load(g, ckpt, `${p}.mlp.fc2`)),
      await Linear.load(g, ckpt, `${p}.adaLN_modulation.1`),
    );
  }

  /** x [B, T, C], siluC = SiLU(c) [B, C], attnMask [B, T, T] → [B, T, C]. */
  forward(x: Tensor, siluC: Tensor, attnMask: Tensor): Tensor {
    const [B, T, C] = x.shape;
    const mod = this.adaLN_modulation.forward(siluC); // [B, 2C]
    const [gateMsa, gateMlp] = chunkLastDim(mod, 2); // [B, C] each
    mod.dispose();
    const n1 = layerNorm(x, this.norm1.weight, this.norm1.bias, 1e-6);
    const qkv = this.self_attn_qkv.forward(n1); // [B, T, 3C]
    n1.dispose();
    const hd = C / this.heads;
    const [q, k, v] = chunkLastDim(qkv, 3).map((t) => { const r = t.reshape([B, T, this.heads, hd]); t.dispose(); return r; });
    qkv.dispose();
    const att = attention(q, k, v, { mask: attnMask }); // [B, T, heads, hd]
    q.dispose(); k.dispose(); v.dispose();
    const att2 = att.reshape([B, T, C]);
    att.dispose();
    const proj = this.self_attn_proj.forward(att2);
    att2.dispose();
    const x1 = gatedResidual(x, gateMsa, proj);
    proj.dispose();
    const n2 = layerNorm(x1, this.norm2.weight, this.norm2.bias, 1e-6);
    const m = this.mlp.forward(n2);
    n2.dispose();
    const x2 = gatedResidual(x1, gateMlp, m);
    for (const t of [m, x1, gateMsa, gateMlp]) t.dispose();
    return x2;
  }

  dispose(): void {
    for (const t of [this.norm1.weight, this.norm1.bias, this.norm2.weight, this.norm2.bias]) t.dispose();
    this.self_attn_qkv.dispose();
    this.self_attn_proj.dispose();
    this.mlp.dispose();
    this.adaLN_modulation.dispose();
  }
}

/** SingleTokenRefiner `connector.S`: input_embedder, t_embedder.mlp.{0,2}, c_embedder.linear_{1,2}, blocks. */
export class SingleTokenRefiner {
  constructor(
    readonly input_embedder: Linear,
    readonly t_embedder: SiluMlp,
    readonly c_embedder: SiluMlp,
    readonly blocks: IndividualTokenRefinerBlock[],
  ) {}

  static async load(g: Gpu, ckpt: Checkpoint, p: string, cfg: ConnectorParams): Promise<SingleTokenRefiner> {
    const L = (n: string) => Linear.load(g, ckpt, `${p}.${n}`);
    const blocks: IndividualTokenRefinerBlock[] = [];
    for (let i = 0; i < cfg.depth; i++) blocks.push(await IndividualTokenRefinerBlock.load(g, ckpt, `${p}.individual_token_refiner.blocks.${i}`, cfg.heads_num));
    return new SingleTokenRefiner(
      await L('input_embedder'),
      new SiluMlp(await L('t_embedder.mlp.0'), await L('t_embedder.mlp.2')),
      new SiluMlp(await L('c_embedder.linear_1'), await L('c_embedder.linear_2')),
      blocks,
    );
  }

  dispose(): void {
    this.input_embedder.dispose();
    this.t_embedder.dispose();
    this.c_embedder.dispose();
    for (const b of this.blocks) b.dispose();
  }
}

export interface ConnectorOut {
  /** [B, T, CH] refined text tokens (input of the DiT's txt_in). */
  txt: Tensor;
  /** [B, 768] global vector (input of vector_in). */
  y: Tensor;
}

/** The per-edit part of the connector (Qwen2Connector.prepare); B rows of one edit's conditioning. */
export class ConnectorText {
  constructor(
    readonly B: number,
    readonly T: number,
    /** global_proj_out(masked mean) [B, 768] */
    readonly y: Tensor,
    /** c_embedder(masked mean) [B, CH] */
    readonly cEmb: Tensor,
    /** input_embedder(llm_embedding) [B, T, CH] */
    readonly xEmbed: Tensor,
    /** refiner self-attention mask [B, T, T] */
    readonly attnMask: Tensor,
  ) {}
  dispose(): void {
    for (const t of [this.y, this.cEmb, this.xEmbed, this.attnMask]) t.dispose();
  }
}

/** Qwen2Connector `connector.*`. */
export class Qwen2Connector {
  constructor(
    readonly cfg: ConnectorParams,
    readonly S: SingleTokenRefiner,
    readonly global_proj_out: Linear,
    /** connector.scale_factor (a [1] parameter of v1.0), read to the host; undefined for v1.1, which has none. */
    readonly scale_factor: number | undefined,
  ) {}

  static async load(g: Gpu, ckpt: Checkpoint, cfg: ConnectorParams, version: DitVersion, prefix = 'connector'): Promise<Qwen2Connector> {
    let sf: number | undefined;
    if (version === 'v1.0') {
      const v = await ckpt.readF32(`${prefix}.scale_factor`);
      if (v.length !== 1) fail(`${prefix}.scale_factor must hold 1 value, has ${v.length}`);
      sf = v[0];
    }
    return new Qwen2Connector(cfg, await SingleTokenRefiner.load(g, ckpt, `${prefix}.S`, cfg), await Linear.load(g, ckpt, `${prefix}.global_proj_out`), sf);
  }

  /**
   * What depends on the edit and not on the step (x: llm_embedding [B, T, Cin] host f32, zero-padded;
   * mask [B, T] 0/1): computed and uploaded once per edit, reused by every step's forward (a DiT predictor
   * holds it). The 18 MB embedding upload, the masked means, y, c_embedder(mean), input_embedder(x) and
   * the refiner mask [B, T, T] are all here; only t varies per step.
   */
  async prepare(g: Gpu, x: Float32Array, mask: Float32Array, B: number, T: number, tap?: Tap): Promise<ConnectorText> {
    const Cin = this.cfg.in_channels, CH = this.cfg.hidden_size;
    if (x.length !== B * T * Cin) fail(`connector: llm_embedding has ${x.length} values, expected [${B},${T},${Cin}]`);
    if (mask.length !== B * T) fail(`connector: mask has ${mask.length} values, expected [${B},${T}]`);
    // global branch: masked mean (× (1 + scale_factor) in v1.0; v1.1 uses it unscaled) → global_proj_out → y [B, 768]
    const mean = maskedMean(x, mask, B, T, Cin); // [B, Cin]
    let meanScaled = mean;
    if (this.scale_factor !== undefined) {
      const s = fr(1 + fr(this.scale_factor));
      meanScaled = mean.map((v) => fr(v * s));
      await tap?.('mid.connector.x_mean_scaled', meanScaled, [B, Cin]);
    }
    await tap?.('mid.connector.context_mean', mean, [B, Cin]);
    const ms = g.upload(meanScaled, [B, Cin]);
    const y = this.global_proj_out.forward(ms); // [B, 768]
    ms.dispose();
    if (y.shape[1] !== CONNECTOR_GLOBAL_DIM) fail(`connector: global_proj_out gives ${fmtShape(y.shape)}, expected [${B},${CONNECTOR_GLOBAL_DIM}]`);
    const cm = g.upload(mean, [B, Cin]);
    const cEmb = this.S.c_embedder.forward(cm); // [B, CH]
    cm.dispose();
    await tap?.('mid.connector.c_emb', cEmb, [B, CH]);
    const xs = g.upload(x, [B, T, Cin]);
    const xEmbed = this.S.input_embedder.forward(xs); // [B, T, CH]
    xs.dispose();
    await tap?.('mid.connector.x_embed', xEmbed, [B, T, CH]);
    const maskHost = refinerAttnMask(mask, B, T);
    await tap?.('mid.connector.self_attn_mask', maskHost, [B, 1, T, T]);
    const attnMask = g.upload(maskHost, [B, T, T]);
    return new ConnectorText(B, T, y, cEmb, xEmbed, attnMask);
  }

  /**
   * t: t_vec [B] in [0, 1]; `text` from prepare() (kept by the caller across steps), or x and mask to
   * prepare it for this call only. The caller disposes the returned tensors.
   */
  async forward(g: Gpu, x: Float32Array | ConnectorText, t: ArrayLike<number>, mask: Float32Array | undefined, B: number, T: number, tap?: Tap): Promise<ConnectorOut> {
    const CH = this.cfg.hidden_size;
    if (t.length !== B) fail(`connector: t has ${t.length} values, expected [${B}]`);
    const own = !(x instanceof ConnectorText);
    const text = x instanceof ConnectorText ? x : await this.prepare(g, x, mask!, B, T, tap);
    if (text.B !== B || text.T !== T) fail(`connector: prepared text is [${text.B}, ${text.T}], the step asks for [${B}, ${T}]`);
    try {
      // t·1000 (Qwen2Connector) → TimestepEmbedder (no further factor) → t_emb [B, CH]
      const tf = g.upload(timestepEmbedding(Array.from(t, (v) => fr(fr(v) * 1000))), [B, TIME_FREQ_DIM]);
      const tEmb = this.S.t_embedder.forward(tf);
      tf.dispose();
      await tap?.('mid.connector.t_emb', tEmb, [B, CH]);
      const c = add(tEmb, text.cEmb); // [B, CH]
      tEmb.dispose();
      await tap?.('mid.connector.c', c, [B, CH]);
      const siluC = silu(c); // adaLN_modulation = Sequential(SiLU, Linear): shared by every block
      c.dispose();
      let h = text.xEmbed;
      for (let i = 0; i < this.S.blocks.length; i++) {
        const nh = this.S.blocks[i].forward(h, siluC, text.attnMask);
        if (h !== text.xEmbed) h.dispose();
        h = nh;
        await tap?.(`mid.connector.refiner${i}.x`, h, [B, T, CH]);
      }
      siluC.dispose();
      if (h === text.xEmbed) h = h.reshape(h.shape); // depth 0: the caller's own reference
      const y = text.y.reshape(text.y.shape);
      await tap?.('mid.connector.txt', h, [B, T, CH]);
      await tap?.('mid.connector.y', y, [B, CONNECTOR_GLOBAL_DIM]);
      return { txt: h, y };
    } finally {
      if (own) text.dispose();
    }
  }

  dispose(): void {
    this.S.dispose();
    this.global_proj_out.dispose();
  }
}

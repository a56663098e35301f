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
import { Linear } from '../nn/linear.js';
import { HostParam, Module, param, type TensorParam } from '../nn/module.js';
import { layerNorm, gatedResidual } from '../ops/norm.js';
import { silu, add } from '../ops/elementwise.js';
import { chunkLast } from '../ops/layout.js';
import { attention } from '../ops/attention.js';
import { fail, fmtShape } from '../errors.js';
import { CONNECTOR_GLOBAL_DIM, TIME_FREQ_DIM, mlpHidden, type ConnectorParams, type DitVersion } from './dit-config.js';
import { mlpForward, type Mlp } from './dit-blocks.js';

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

/** LayerNorm with affine (eps 1e-6): `weight`, `bias` [C]. */
export class LayerNorm extends Module {
  readonly weight: TensorParam;
  readonly bias: TensorParam;
  constructor(C: number) {
    super();
    [this.weight, this.bias] = [param(C), param(C)];
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight.value, this.bias.value, 1e-6);
  }
}

/** `MLP(fc1 → SiLU → fc2)` of a refiner block. */
export class SiluMlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(C: number, hidden: number) {
    super();
    [this.fc1, this.fc2] = [new Linear(hidden, C), new Linear(C, hidden)];
  }
  forward(x: Tensor): Tensor {
    return x.gpu.scope(() => this.fc2.forward(this.fc1.forward(x, 'silu')));
  }
}

/** `TimestepEmbedder.mlp` = Sequential(Linear(256, CH), SiLU, Linear(CH, CH)). */
export class TimestepEmbedder extends Module {
  readonly mlp: Mlp;
  constructor(CH: number) {
    super();
    this.mlp = [new Linear(CH, TIME_FREQ_DIM), 'silu', new Linear(CH, CH)];
  }
  forward(tFreq: Tensor): Tensor {
    return mlpForward(this.mlp, tFreq);
  }
}

/** `TextProjection`: linear_2(SiLU(linear_1(x))). */
export class TextProjection extends Module {
  readonly linear_1: Linear;
  readonly linear_2: Linear;
  constructor(Cin: number, CH: number) {
    super();
    [this.linear_1, this.linear_2] = [new Linear(CH, Cin), new Linear(CH, CH)];
  }
  forward(x: Tensor): Tensor {
    return x.gpu.scope(() => this.linear_2.forward(this.linear_1.forward(x, 'silu')));
  }
}

/** IndividualTokenRefinerBlock: `connector.S.individual_token_refiner.blocks.{i}`. */
export class IndividualTokenRefinerBlock extends Module {
  readonly norm1: LayerNorm;
  readonly self_attn_qkv: Linear;
  readonly self_attn_proj: Linear;
  readonly norm2: LayerNorm;
  readonly mlp: SiluMlp;
  readonly adaLN_modulation: ['silu', Linear]; // Sequential(SiLU, Linear): SiLU(c) computed once by the caller

  constructor(
    C: number,
    readonly heads: number,
  ) {
    super();
    [this.norm1, this.self_attn_qkv, this.self_attn_proj] = [new LayerNorm(C), new Linear(3 * C, C), new Linear(C, C)];
    [this.norm2, this.mlp, this.adaLN_modulation] = [new LayerNorm(C), new SiluMlp(C, mlpHidden(C, 4.0)), ['silu', new Linear(2 * C, C)]];
  }

  /** x [B, T, C], siluC = SiLU(c) [B, C], attnMask [B, T, T] → [B, T, C]. */
  forward(x: Tensor, siluC: Tensor, attnMask: Tensor): Tensor {
    const g = x.gpu;
    return g.scope(() => {
      const [gateMsa, gateMlp] = g.scope(() => chunkLastDim(this.adaLN_modulation[1].forward(siluC), 2)); // [B, C] each
      const x1 = g.scope(() => gatedResidual(x, gateMsa, this.self_attn_proj.forward(this.selfAttention(x, attnMask))));
      return gatedResidual(x1, gateMlp, g.scope(() => this.mlp.forward(this.norm2.forward(x1))));
    });
  }

  /** attn(LN1(x)) with the refiner mask, no q/k norm: [B, T, C]. */
  private selfAttention(x: Tensor, attnMask: Tensor): Tensor {
    const g = x.gpu, [B, T, C] = x.shape;
    return g.scope(() => {
      const [q, k, v] = g.scope(() => chunkLastDim(g.scope(() => this.self_attn_qkv.forward(this.norm1.forward(x))), 3)).map((t) => t.reshape([B, T, this.heads, C / this.heads]));
      return attention(q, k, v, { mask: attnMask }).reshape([B, T, C]);
    });
  }
}

/** IndividualTokenRefiner: `blocks`. */
export class IndividualTokenRefiner extends Module {
  readonly blocks: IndividualTokenRefinerBlock[];
  constructor(cfg: ConnectorParams) {
    super();
    this.blocks = Array.from({ length: cfg.depth }, () => new IndividualTokenRefinerBlock(cfg.hidden_size, cfg.heads_num));
  }
}

/** SingleTokenRefiner `connector.S`: input_embedder, t_embedder, c_embedder, individual_token_refiner. */
export class SingleTokenRefiner extends Module {
  readonly input_embedder: Linear;
  readonly t_embedder: TimestepEmbedder;
  readonly c_embedder: TextProjection;
  readonly individual_token_refiner: IndividualTokenRefiner;
  constructor(cfg: ConnectorParams) {
    super();
    const CH = cfg.hidden_size;
    [this.input_embedder, this.t_embedder, this.c_embedder] = [new Linear(CH, cfg.in_channels), new TimestepEmbedder(CH), new TextProjection(cfg.in_channels, CH)];
    this.individual_token_refiner = new IndividualTokenRefiner(cfg);
  }
  get blocks(): IndividualTokenRefinerBlock[] {
    return this.individual_token_refiner.blocks;
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
  get tensors(): Tensor[] {
    return [this.y, this.cEmb, this.xEmbed, this.attnMask];
  }
  dispose(): void {
    for (const t of this.tensors) t.dispose();
  }
}

/** Qwen2Connector `connector.*`. */
export class Qwen2Connector extends Module {
  /** connector.scale_factor (a [1] parameter of v1.0), read to the host; absent in v1.1 / v1.2. */
  readonly scale_factor: HostParam | undefined;
  readonly S: SingleTokenRefiner;
  readonly global_proj_out: Linear;

  constructor(
    readonly cfg: ConnectorParams,
    version: DitVersion,
  ) {
    super();
    this.scale_factor = version === 'v1.0' ? new HostParam([1]) : undefined;
    this.S = new SingleTokenRefiner(cfg);
    this.global_proj_out = new Linear(CONNECTOR_GLOBAL_DIM, cfg.in_channels);
  }

  /**
   * What depends on the edit and not on the step (x: llm_embedding [B, T, Cin] host f32, zero-padded;
   * mask [B, T] 0/1): computed and uploaded once per edit, reused by every step's forward (a DiT predictor
   * holds it). The 18 MB embedding upload, the masked means, y, c_embedder(mean), input_embedder(x) and
   * the refiner mask [B, T, T] are all here; only t varies per step. The tensors belong to the caller's scope.
   */
  async prepare(g: Gpu, x: Float32Array, mask: Float32Array, B: number, T: number, tap?: Tap): Promise<ConnectorText> {
    const Cin = this.cfg.in_channels, CH = this.cfg.hidden_size;
    if (x.length !== B * T * Cin) fail(`connector: llm_embedding has ${x.length} values, expected [${B},${T},${Cin}]`);
    if (mask.length !== B * T) fail(`connector: mask has ${mask.length} values, expected [${B},${T}]`);
    const t = await g.scopeAsync(async () => {
      // global branch: masked mean (× (1 + scale_factor) in v1.0; v1.1 uses it unscaled) → global_proj_out → y [B, 768]
      const mean = maskedMean(x, mask, B, T, Cin); // [B, Cin]
      let meanScaled = mean;
      if (this.scale_factor) {
        const s = fr(1 + fr(this.scale_factor.value.data[0]));
        meanScaled = mean.map((v) => fr(v * s));
        await tap?.('mid.connector.x_mean_scaled', meanScaled, [B, Cin]);
      }
      await tap?.('mid.connector.context_mean', mean, [B, Cin]);
      const y = this.global_proj_out.forward(g.upload(meanScaled, [B, Cin])); // [B, 768]
      if (y.shape[1] !== CONNECTOR_GLOBAL_DIM) fail(`connector: global_proj_out gives ${fmtShape(y.shape)}, expected [${B},${CONNECTOR_GLOBAL_DIM}]`);
      const cEmb = this.S.c_embedder.forward(g.upload(mean, [B, Cin])); // [B, CH]
      await tap?.('mid.connector.c_emb', cEmb, [B, CH]);
      const xEmbed = this.S.input_embedder.forward(g.upload(x, [B, T, Cin])); // [B, T, CH]
      await tap?.('mid.connector.x_embed', xEmbed, [B, T, CH]);
      const maskHost = refinerAttnMask(mask, B, T);
      await tap?.('mid.connector.self_attn_mask', maskHost, [B, 1, T, T]);
      return [y, cEmb, xEmbed, g.upload(maskHost, [B, T, T])];
    });
    return new ConnectorText(B, T, t[0], t[1], t[2], t[3]);
  }

  /**
   * t: t_vec [B] in [0, 1]; `text` from prepare() (kept by the caller across steps), or x and mask to
   * prepare it for this call only. The returned tensors belong to the caller's scope.
   */
  async forward(g: Gpu, x: Float32Array | ConnectorText, t: ArrayLike<number>, mask: Float32Array | undefined, B: number, T: number, tap?: Tap): Promise<ConnectorOut> {
    const CH = this.cfg.hidden_size;
    if (t.length !== B) fail(`connector: t has ${t.length} values, expected [${B}]`);
    return g.scopeAsync(async () => {
      const text = x instanceof ConnectorText ? x : await this.prepare(g, x, mask!, B, T, tap);
      if (text.B !== B || text.T !== T) fail(`connector: prepared text is [${text.B}, ${text.T}], the step asks for [${B}, ${T}]`);
      // t·1000 (Qwen2Connector) → TimestepEmbedder (no further factor) → t_emb [B, CH]
      const tEmb = this.S.t_embedder.forward(g.upload(timestepEmbedding(Array.from(t, (v) => fr(fr(v) * 1000))), [B, TIME_FREQ_DIM]));
      await tap?.('mid.connector.t_emb', tEmb, [B, CH]);
      const c = add(tEmb, text.cEmb); // [B, CH]
      await tap?.('mid.connector.c', c, [B, CH]);
      const siluC = silu(c); // adaLN_modulation = Sequential(SiLU, Linear): shared by every block
      let h = text.xEmbed.reshape(text.xEmbed.shape); // a view: the prepared text stays the caller's
      for (const [i, blk] of this.S.blocks.entries()) {
        h = blk.forward(h, siluC, text.attnMask);
        await tap?.(`mid.connector.refiner${i}.x`, h, [B, T, CH]);
      }
      const y = text.y.reshape(text.y.shape);
      await tap?.('mid.connector.txt', h, [B, T, CH]);
      await tap?.('mid.connector.y', y, [B, CONNECTOR_GLOBAL_DIM]);
      return { txt: h, y };
    });
  }
}

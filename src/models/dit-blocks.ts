/**
 * Step1XEdit blocks (modules/layers.py, FLUX geometry). Fields are named like the checkpoint keys
 * (nn/module.ts derives keys, loading and disposal from them). H = hidden, M = int(H·mlp_ratio),
 * heads × hd = H, T text tokens, L image tokens (2N: noise + ref).
 *
 *   Modulation: lin(SiLU(vec)) [B, 6H | 3H] chunked (shift, scale, gate)[, (shift, scale, gate)]
 *   DoubleStreamBlock: per stream LN(no affine) → (1+scale)x+shift → qkv → RMS q/k norm (f32, eps 1e-6);
 *     joint attention over cat(txt, img) with RoPE and NO mask; x += gate·proj; x += gate·MLP(GELU-tanh)
 *   SingleStreamBlock: linear1 → [qkv 3H | mlp M]; out = linear2(cat(attn, GELU-tanh(mlp))); x += gate·out
 *   LastLayer: (shift, scale) = adaLN_modulation.1(SiLU(vec)).chunk(2)  — shift FIRST; linear
 *   EmbedND: per axis rope(ids[..., i], axes_dim[i], theta), interleaved-pair 2×2 rotation matrices
 *
 * Memory-bound passes (same values as the reference's separate ops): q/k norm + RoPE are one kernel per GEMM
 * output (ops/qk-norm-rope.ts) writing the double block's joint [txt ‖ img] q and k rows in place; joint v
 * and the single block's mlp half of cat(attn, mlp) are written by their GEMMs into views; the double
 * block's proj GEMMs read their rows of the joint attention output in place (no concat, no slices).
 *
 * Lifetimes: every forward is a tensor scope (runtime/scope.ts). Nested scopes end where the reference
 * drops its last use of an intermediate, so the activation peak is that of freeing by hand.
 */
import type { Gpu } from '../runtime/gpu.js';
import { DTYPE_BYTES, type Tensor } from '../runtime/tensor.js';
import type { Activation } from '../ops/linear.js';
import { Linear } from '../nn/linear.js';
import type { LinearInto } from '../nn/weight.js';
import { Module, param, type TensorParam } from '../nn/module.js';
import { layerNormModulate, rmsNorm, gatedResidual } from '../ops/norm.js';
import { slice, writeColumns } from '../ops/layout.js';
import { attention } from '../ops/attention.js';
import { activationDtype, widen } from '../ops/act-dtype.js';
import { rmsNormRope, type JointRows } from '../ops/qk-norm-rope.js';
import { fluxPe } from '../ops/rope-tables.js';
import { chunkLastDim } from './connector.js';
import { headDim, mlpHidden, type DitParams } from './dit-config.js';

/** torch Sequential(Linear, act, Linear): keys `.0` and `.2`, the activation fused into the first GEMM. */
export type Mlp = [Linear, Activation, Linear];
export const mlpForward = ([fc1, act, fc2]: Mlp, x: Tensor): Tensor => x.gpu.scope(() => fc2.forward(fc1.forward(x, act)));

/** `MLPEmbedder`: out_layer(SiLU(in_layer(x))). */
export class MLPEmbedder extends Module {
  readonly in_layer: Linear;
  readonly out_layer: Linear;
  constructor(inDim: number, hidden: number) {
    super();
    this.in_layer = new Linear(hidden, inDim);
    this.out_layer = new Linear(hidden, hidden);
  }
  forward(x: Tensor): Tensor {
    return x.gpu.scope(() => this.out_layer.forward(this.in_layer.forward(x, 'silu')));
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
 * to q or k [B, L, heads, hd] together with their QK-norm by one kernel (interleaved pairs; token-chunked
 * by the op when over the binding limit). A batch-1 table is broadcast over the batch. Long-lived (a
 * predictor keeps it across steps): made outside any scope.
 */
export class RopePe {
  private constructor(readonly pe: Tensor) {}

  static build(g: Gpu, table: Float32Array, Bp: number, L: number, hd: number): RopePe {
    return new RopePe(g.upload(table, [Bp, L, hd / 2, 2, 2]));
  }

  /** norm(x) then RoPE in one pass (ops/qk-norm-rope.ts): x [B, Ls, heads, hd] → rows [at, at + Ls) of into.out, or a new tensor. */
  normApply(x: Tensor, norm: RMSNorm, into?: JointRows): Tensor {
    return rmsNormRope(x, norm.scale.value, this.pe, norm.eps, into);
  }

  dispose(): void {
    this.pe.dispose();
  }
}

/** `RMSNorm(dim)`: x / rms(x) · scale over the last dim (f32, eps 1e-6). */
export class RMSNorm extends Module {
  readonly scale: TensorParam;
  readonly eps = 1e-6;
  constructor(dim: number) {
    super();
    this.scale = param(dim);
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.scale.value, this.eps);
  }
}

/** `QKNorm`: RMSNorm over hd of q and k. */
export class QKNorm extends Module {
  readonly query_norm: RMSNorm;
  readonly key_norm: RMSNorm;
  constructor(hd: number) {
    super();
    this.query_norm = new RMSNorm(hd);
    this.key_norm = new RMSNorm(hd);
  }
}

/** `Modulation(H, double)`: lin(SiLU(vec)) chunked into 6 (double) or 3 parts [B, H]; siluVec = SiLU(vec). */
export class Modulation extends Module {
  readonly lin: Linear;
  constructor(
    H: number,
    readonly parts: 3 | 6,
  ) {
    super();
    this.lin = new Linear(parts * H, H);
  }
  forward(siluVec: Tensor): Tensor[] {
    return siluVec.gpu.scope(() => chunkLastDim(this.lin.forward(siluVec), this.parts));
  }
}

/** (1 + scale)·LN(x) + shift, LN without affine, eps 1e-6: one fused kernel under --precision mixed (ops/norm.ts). */
export const normModulate = (x: Tensor, shift: Tensor, scale: Tensor): Tensor => layerNormModulate(x, shift, scale, 1e-6);

/**
 * Output rows [start, start+count) of a Linear: a GEMM over row views of weight and bias, identical to
 * slicing the full output but without materialising it (fused qkv / linear1 projections).
 */
export function linearRows(x: Tensor, lin: Linear, start: number, count: number, act?: Activation, into?: LinearInto): Tensor {
  return x.gpu.scope(() => lin.rows(start, count).forward(x, act, into)); // carries scales and LoRA adapters along (nn/weight.ts)
}

/**
 * Token rows [at, at + L) of joint [B, Lj, N] ← x [B, L, C] through output rows [start, start + N) of a
 * Linear: one GEMM per batch item writing its row range in place (the double block's joint v, no concat).
 * Where a range does not start on the binding alignment (tiny widths) the GEMM result is copied in instead,
 * widened where it came out f16 and the joint is f32 (jointDtype: a stream of ≤ 4 rows beside one of more).
 */
function linearRowsInto(x: Tensor, lin: Linear, start: number, joint: Tensor, at: number): void {
  const g = x.gpu, [B, L, C] = x.shape, [, Lj] = joint.shape, N = joint.numel / (B * Lj);
  g.scope(() => {
    const eb = DTYPE_BYTES[joint.dtype];
    const aligned = Array.from({ length: B }, (_, b) => (joint.byteOffset + (b * Lj + at) * N * eb) % g.storageAlign === 0).every(Boolean);
    if (!aligned) {
      const y = linearRows(x, lin, start, N);
      return void writeColumns((y.dtype === joint.dtype ? y : widen(y)).reshape([B, L * N]), joint.reshape([B, Lj * N]), at * N);
    }
    const x2 = x.reshape([B * L, C]), j2 = joint.reshape([B * Lj, N]);
    for (let b = 0; b < B; b++) linearRows(x2.rows(b * L, L), lin, start, N, undefined, { out: j2.rows(b * Lj + at, L) });
  });
}

/**
 * lin over token rows [at, at + n) of joint [B, Lj, C] → [B, n, N], the rows read in place: one GEMM per
 * batch item over a row view, into its rows of the result (no slice copy of the joint attention output).
 * Where a batch item's result rows would not start on the binding alignment (tiny widths), over a slice.
 */
function linearOfRows(joint: Tensor, at: number, n: number, lin: Linear): Tensor {
  const g = joint.gpu, [B, Lj, C] = joint.shape, N = lin.outFeatures;
  return g.scope(() => {
    if (!Array.from({ length: B }, (_, b) => (b * n * N * 4) % g.storageAlign === 0).every(Boolean)) return lin.forward(slice(joint, 1, at, n));
    const out = g.empty([B, n, N], 'f32', 'linear');
    const j2 = joint.reshape([B * Lj, C]), o2 = out.reshape([B * n, N]);
    for (let b = 0; b < B; b++) lin.forward(j2.rows(b * Lj + at, n), undefined, { out: o2.rows(b * n, n) });
    return out;
  });
}

/**
 * Storage of the double block's joint q, k, v: the step's activation dtype, but f32 when a stream has at
 * most 4 token rows per batch item (T or L ≤ 4, test sizes only): its per-item v GEMM is then the gemv,
 * which writes f32 only (ops/plan-gemm.ts leaves M ≤ 4 to it), and there is nothing to save at that size.
 */
export function jointDtype(g: Gpu, T: number, L: number): 'f32' | 'f16' {
  return Math.min(T, L) <= 4 ? 'f32' : activationDtype(g);
}

/** The double block's joint [txt ‖ img] q, k, v [B, T+L, heads, hd] and the first token row of a stream. */
interface Joint {
  qkv: Tensor[];
  at: number;
}

/**
 * x [B, L, C] through a fused qkv Linear [3H, C] → q, k (RMS-normed over hd and roped: one fused pass each
 * over the GEMM output) and v as [B, L, heads, hd]. With `joint`, all three are written into token rows
 * [at, at + L) of the joint tensors instead (no concat) and those are returned.
 */
function projectQkv(x: Tensor, qkv: Linear, H: number, heads: number, norm: QKNorm, pe: RopePe, joint?: Joint): Tensor[] {
  const [B, L] = x.shape;
  // "B L (K H D) -> K B L H D": rows [0,H) = q, [H,2H) = k, [2H,3H) = v
  const part = (i: number) => linearRows(x, qkv, i * H, H).reshape([B, L, heads, H / heads]);
  const into = (i: number) => (joint ? { out: joint.qkv[i], at: joint.at } : undefined);
  const q = x.gpu.scope(() => pe.normApply(part(0), norm.query_norm, into(0)));
  const k = x.gpu.scope(() => pe.normApply(part(1), norm.key_norm, into(1)));
  if (!joint) return [q, k, part(2)];
  linearRowsInto(x, qkv, 2 * H, joint.qkv[2], joint.at);
  return joint.qkv;
}

/** Unmasked attention of normed, roped q, k and v [B, L, heads, hd] → [B, L, H]. */
function attend(q: Tensor, k: Tensor, v: Tensor): Tensor {
  const [B, L, heads, hd] = q.shape;
  return q.gpu.scope(() => attention(q, k, v).reshape([B, L, heads * hd])); // softmax scale 1/sqrt(hd)
}

/** `SelfAttention` of a double-block stream: qkv, norm (QKNorm), proj. */
export class SelfAttention extends Module {
  readonly qkv: Linear;
  readonly norm: QKNorm;
  readonly proj: Linear;
  constructor(
    H: number,
    readonly heads: number,
    qkvBias: boolean,
  ) {
    super();
    this.qkv = new Linear(3 * H, H, { bias: qkvBias });
    this.norm = new QKNorm(H / heads);
    this.proj = new Linear(H, H);
  }
  /** q, k, v of the modulated pre-norm of x [B, L, H] into token rows [at, at + L) of the joint q, k, v. */
  project(x: Tensor, shift: Tensor, scale: Tensor, pe: RopePe, joint: Joint): void {
    x.gpu.scope(() => void projectQkv(normModulate(x, shift, scale), this.qkv, x.shape[2], this.heads, this.norm, pe, joint));
  }
}

export class DoubleStreamBlock extends Module {
  readonly img_mod: Modulation;
  readonly img_attn: SelfAttention;
  readonly img_mlp: Mlp;
  readonly txt_mod: Modulation;
  readonly txt_attn: SelfAttention;
  readonly txt_mlp: Mlp;

  constructor(cfg: DitParams) {
    super();
    const H = cfg.hidden_size, M = mlpHidden(H, cfg.mlp_ratio);
    const mlp = (): Mlp => [new Linear(M, H), 'gelu_tanh', new Linear(H, M)];
    [this.img_mod, this.img_attn, this.img_mlp] = [new Modulation(H, 6), new SelfAttention(H, cfg.num_heads, cfg.qkv_bias), mlp()];
    [this.txt_mod, this.txt_attn, this.txt_mlp] = [new Modulation(H, 6), new SelfAttention(H, cfg.num_heads, cfg.qkv_bias), mlp()];
  }

  /** img [B, L, H], txt [B, T, H], siluVec [B, H], pe [B, T+L, hd/2, 2, 2] → new img, txt. */
  forward(img: Tensor, txt: Tensor, siluVec: Tensor, pe: RopePe): [Tensor, Tensor] {
    const g = img.gpu, T = txt.shape[1], L = img.shape[1];
    return g.scope(() => {
      // (shift1, scale1, gate1, shift2, scale2, gate2), each [B, H]
      const im = this.img_mod.forward(siluVec), tm = this.txt_mod.forward(siluVec);
      const [tProj, iProj] = g.scope(() => {
        const attn = g.scope(() => {
          // joint sequence: text first, then image; [B, T+L, heads, hd]. Each stream's q and k are normed
          // and roped straight into their rows of the joint tensors, v projected into its rows: no concat.
          const [B, , H] = img.shape, heads = this.img_attn.heads;
          // stored as the step's activations are (ops/act-dtype.ts: f16 inside an f16 DiT step, else f32; jointDtype)
          const qkv = [0, 1, 2].map(() => g.empty([B, T + L, heads, H / heads], jointDtype(g, T, L), 'joint qkv'));
          this.txt_attn.project(txt, tm[0], tm[1], pe, { qkv, at: 0 });
          this.img_attn.project(img, im[0], im[1], pe, { qkv, at: T });
          return attend(qkv[0], qkv[1], qkv[2]); // [B, T+L, H]
        });
        // each stream's proj over its rows of the joint attention output, read in place
        return [linearOfRows(attn, 0, T, this.txt_attn.proj), linearOfRows(attn, T, L, this.img_attn.proj)];
      });
      return [this.post(img, iProj, this.img_mlp, im), this.post(txt, tProj, this.txt_mlp, tm)];
    });
  }

  /** x += gate1·proj (proj = attn_proj(attn), computed by the caller); x += gate2·MLP((1 + scale2)·LN(x) + shift2). */
  private post(x: Tensor, proj: Tensor, mlp: Mlp, [, , gate1, shift2, scale2, gate2]: Tensor[]): Tensor {
    const g = x.gpu;
    return g.scope(() => {
      const x1 = g.scope(() => gatedResidual(x, gate1, proj));
      return gatedResidual(x1, gate2, g.scope(() => mlpForward(mlp, normModulate(x1, shift2, scale2))));
    });
  }
}

export class SingleStreamBlock extends Module {
  readonly linear1: Linear; // [3H + M, H]
  readonly linear2: Linear; // [H, H + M]
  readonly norm: QKNorm;
  readonly modulation: Modulation; // [3H, H]
  readonly heads: number;
  readonly mlpHidden: number;

  constructor(cfg: DitParams) {
    super();
    const H = cfg.hidden_size, M = mlpHidden(H, cfg.mlp_ratio);
    [this.heads, this.mlpHidden] = [cfg.num_heads, M];
    this.linear1 = new Linear(3 * H + M, H);
    this.linear2 = new Linear(H, H + M);
    this.norm = new QKNorm(headDim(cfg));
    this.modulation = new Modulation(H, 3);
  }

  /** x [B, T+L, H] (txt then img), siluVec [B, H], pe → [B, T+L, H]. */
  forward(x: Tensor, siluVec: Tensor, pe: RopePe): Tensor {
    const g = x.gpu;
    return g.scope(() => {
      const [shift, scale, gate] = this.modulation.forward(siluVec);
      const cat = g.scope(() => this.attnMlp(x, shift, scale, pe)); // [B, T+L, H + M]
      return gatedResidual(x, gate, this.linear2.forward(cat));
    });
  }

  /**
   * cat(attention, GELU-tanh(mlp)) [B, T+L, H + M] of linear1 = [q | k | v | mlp] by output rows, run as GEMMs
   * over row views of its weight: the same dot products without the [B, T+L, 3H+M] buffer (1.5 GB at 1024²)
   * and its slices. The mlp GEMM writes its columns [H, H+M) of the concatenation in place; only the
   * attention output is copied into columns [0, H).
   */
  private attnMlp(x: Tensor, shift: Tensor, scale: Tensor, pe: RopePe): Tensor {
    const g = x.gpu, [B, L, H] = x.shape;
    return g.scope(() => {
      const xMod = normModulate(x, shift, scale);
      const attn = g.scope(() => {
        const [q, k, v] = projectQkv(xMod, this.linear1, H, this.heads, this.norm, pe);
        return attend(q, k, v);
      });
      // stored as the attention output is (f16 under f16 activation storage where attention writes f16)
      const cat = g.empty([B, L, H + this.mlpHidden], attn.dtype, 'attn ‖ mlp');
      linearRows(xMod, this.linear1, 3 * H, this.mlpHidden, 'gelu_tanh', { out: cat, col: H });
      return writeColumns(attn, cat, 0);
    });
  }
}

export class LastLayer extends Module {
  readonly linear: Linear;
  readonly adaLN_modulation: ['silu', Linear];
  constructor(H: number, out: number) {
    super();
    this.linear = new Linear(out, H);
    this.adaLN_modulation = ['silu', new Linear(2 * H, H)]; // Sequential(SiLU, Linear): SiLU applied by the caller
  }
  /** x [B, L, H], siluVec [B, H] → [B, L, out_channels]. Chunk order: shift THEN scale. */
  forward(x: Tensor, siluVec: Tensor): Tensor {
    return x.gpu.scope(() => {
      const [shift, scale] = chunkLastDim(this.adaLN_modulation[1].forward(siluVec), 2);
      return this.linear.forward(normModulate(x, shift, scale));
    });
  }
}

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
import { Checkpoint } from '../io/checkpoint.js';
import { Linear } from '../nn/linear.js';
import { loadWeight } from '../nn/weights.js';
import { layerNormModulate, rmsNorm, gatedResidual } from '../ops/norm.js';
import { silu } from '../ops/elementwise.js';
import { concat, slice } from '../ops/layout.js';
import { attention } from '../ops/attention.js';
import { applyRopeFlux } from '../ops/rope.js';
import { fluxPe } from '../ops/rope-tables.js';
import { chunkLastDim } from './connector.js';
import { mlpHidden, type DitParams } from './dit-config.js';

export const disposeAll = (...ts: (Tensor | undefined)[]): void => ts.forEach((t) => t?.dispose());

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
  const part = lin.rows(start, count); // carries scales and LoRA adapters along (nn/weight.ts)
  const y = part.forward(x, act);
  part.dispose();
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
      const m = layerNormModulate(x, sh, sc, 1e-6);
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
      const m = layerNormModulate(x1, sh2, sc2, 1e-6);
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
    const xm = layerNormModulate(x, shift, scale, 1e-6);
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
    const m = layerNormModulate(x, shift, scale, 1e-6);
    disposeAll(shift, scale);
    const y = this.linear.forward(m);
    m.dispose();
    return y;
  }
  dispose(): void {
    this.linear.dispose();
    this.adaLN_modulation.dispose();
  }
}

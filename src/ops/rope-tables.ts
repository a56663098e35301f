/**
 * Host-side RoPE tables (pure TS, no GPU), built exactly like the reference code:
 *   fluxPe            FLUX `EmbedND` / `rope()` (math.py): f64 throughout, cast to f32 at the end.
 *   mropeCosSin       transformers Qwen2_5_VLRotaryEmbedding + apply_multimodal_rotary_pos_emb (f32 like torch).
 *   visionRopeCosSin  Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb (+ cat(emb, emb)), f32 like torch.
 */
import { fail } from '../errors.js';

const f32 = Math.fround;

/**
 * FLUX pe: ids [B, L, n_axes] (f32) → [B, L, Dh/2, 2, 2] with Dh = Σ axesDim; per axis a of dim d:
 * omega_i = 1 / theta^(2i/d), angle = pos * omega_i, entry [[cos, -sin], [sin, cos]]; axes concatenated
 * along Dh/2 (EmbedND). The caller adds the head axis ([B, 1, L, ...] in the reference) by broadcasting.
 */
export function fluxPe(ids: Float32Array, B: number, L: number, axesDim: number[], theta: number): Float32Array {
  const nAx = axesDim.length;
  if (ids.length !== B * L * nAx) fail(`fluxPe: ids has ${ids.length} values, expected B*L*${nAx} = ${B * L * nAx}`);
  if (axesDim.some((d) => d % 2 !== 0 || d <= 0)) fail(`fluxPe: axesDim [${axesDim}] must be positive and even`);
  const half = axesDim.reduce((a, d) => a + d, 0) / 2;
  const omega: number[] = [];
  for (const d of axesDim) for (let i = 0; i < d; i += 2) omega.push(1 / theta ** (i / d));
  const axisOf: number[] = axesDim.flatMap((d, a) => new Array(d / 2).fill(a));
  const out = new Float32Array(B * L * half * 4);
  for (let t = 0; t < B * L; t++)
    for (let i = 0; i < half; i++) {
      const ang = ids[t * nAx + axisOf[i]] * omega[i];
      const c = Math.cos(ang), s = Math.sin(ang), o = (t * half + i) * 4;
      out[o] = c;
      out[o + 1] = -s;
      out[o + 2] = s;
      out[o + 3] = c;
    }
  return out;
}

/** inv_freq as torch computes it in f32: 1 / (theta ** (arange(0, dim, 2).float() / dim)). */
function invFreqF32(dim: number, theta: number): Float32Array {
  const n = dim / 2;
  const inv = new Float32Array(n);
  for (let i = 0; i < n; i++) inv[i] = f32(1 / f32(theta ** f32((2 * i) / dim)));
  return inv;
}

/**
 * Qwen2.5 text M-RoPE tables. positionIds [3, B, L] (t, h, w rows) → cos/sin [B, L, headDim]:
 * freqs = pos · inv_freq (f32), emb = cat(freqs, freqs), then the last dim is split into chunks of
 * mropeSection * 2 (i.e. [s0, s1, s2, s0, s1, s2]) and chunk i takes its values from position row i % 3.
 */
export function mropeCosSin(positionIds: Int32Array, B: number, L: number, headDim: number, theta: number, mropeSection: number[]): { cos: Float32Array; sin: Float32Array } {
  if (positionIds.length !== 3 * B * L) fail(`mropeCosSin: positionIds has ${positionIds.length} values, expected 3*B*L = ${3 * B * L}`);
  const half = headDim / 2;
  const secSum = mropeSection.reduce((a, d) => a + d, 0);
  if (headDim % 2 !== 0 || secSum !== half)
    fail(`mropeCosSin: mropeSection [${mropeSection}] must sum to headDim/2 = ${half}`);
  const inv = invFreqF32(headDim, theta);
  const rowOf = new Int32Array(headDim); // which of t/h/w feeds each of the headDim lanes
  let d = 0;
  [...mropeSection, ...mropeSection].forEach((len, ci) => {
    for (let e = 0; e < len; e++) rowOf[d++] = ci % 3;
  });
  const cos = new Float32Array(B * L * headDim), sin = new Float32Array(B * L * headDim);
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let e = 0; e < headDim; e++) {
        const pos = positionIds[(rowOf[e] * B + b) * L + l];
        const ang = f32(pos * inv[e % half]);
        const o = (b * L + l) * headDim + e;
        cos[o] = Math.cos(ang);
        sin[o] = Math.sin(ang);
      }
  return { cos, sin };
}

/**
 * Qwen2.5-VL vision 2-D RoPE. For each image (t, h, w) in 14-px patches: (hpos, wpos) per patch in the
 * processor's merge-block order (h, w reshaped [h/m, m, w/m, m], permuted (0, 2, 1, 3)), repeated t times;
 * rotary = cat(hpos · inv_freq, wpos · inv_freq) with inv_freq of dim headDim/2; emb = cat(rotary, rotary).
 * Returns cos/sin [Lvision, headDim] in the ORIGINAL (pre-window-reorder) patch order.
 */
export function visionRopeCosSin(gridThw: [number, number, number][], spatialMergeSize: number, headDim: number, theta = 10000): { cos: Float32Array; sin: Float32Array } {
  const m = spatialMergeSize;
  if (headDim % 4 !== 0) fail(`visionRopeCosSin: headDim ${headDim} must be a multiple of 4`);
  const inv = invFreqF32(headDim / 2, theta); // headDim/4 frequencies
  const q = inv.length;
  const pos: [number, number][] = [];
  for (const [t, h, w] of gridThw) {
    if (h % m !== 0 || w % m !== 0) fail(`visionRopeCosSin: grid [${t},${h},${w}] is not a multiple of the merge size ${m}`);
    const one: [number, number][] = [];
    for (let bh = 0; bh < h / m; bh++)
      for (let bw = 0; bw < w / m; bw++)
        for (let ih = 0; ih < m; ih++) for (let iw = 0; iw < m; iw++) one.push([bh * m + ih, bw * m + iw]);
    for (let k = 0; k < t; k++) pos.push(...one);
  }
  const cos = new Float32Array(pos.length * headDim), sin = new Float32Array(pos.length * headDim);
  pos.forEach(([hp, wp], n) => {
    for (let e = 0; e < headDim; e++) {
      const r = e % (2 * q); // lane within rotary = [h freqs (q), w freqs (q)]
      const ang = f32((r < q ? hp : wp) * inv[r % q]);
      cos[n * headDim + e] = Math.cos(ang);
      sin[n * headDim + e] = Math.sin(ang);
    }
  });
  return { cos, sin };
}

/** The (h, w) patch ids visionRopeCosSin uses (golden `mid.vision_rot_pos_ids`), for tests and the model. */
export function visionPosIds(gridThw: [number, number, number][], spatialMergeSize: number): Int32Array {
  const m = spatialMergeSize;
  const out: number[] = [];
  for (const [t, h, w] of gridThw)
    for (let k = 0; k < t; k++)
      for (let bh = 0; bh < h / m; bh++)
        for (let bw = 0; bw < w / m; bw++)
          for (let ih = 0; ih < m; ih++) for (let iw = 0; iw < m; iw++) out.push(bh * m + ih, bw * m + iw);
  return Int32Array.from(out);
}

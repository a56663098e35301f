/**
 * Region masks (`--mask FILE`, `--mask-feather PX`): white = may change, black = keep.
 *
 *   1. the mask image (any size) → luminance in [0, 1] (PIL "L": (299 R + 587 G + 114 B) / 1000 / 255)
 *   2. resized to the input photo's size (area average when shrinking, bilinear when growing)
 *   3. feathered: separable Gaussian, σ = PX / 2, truncated at ±PX pixels, edges clamped
 *   4. for the sampler: area-averaged onto the latent grid (working size / 8) and laid out like the
 *      packed tokens (token (i, j), value c·4 + ph·2 + pw ↔ latent pixel (2i + ph, 2j + pw))
 * After every Euler step the noisy half becomes (diffusers' FluxKontextInpaintPipeline rule)
 *      x = m·x + (1 − m)·(t_next·noise + (1 − t_next)·z_src)
 * and the written image is m·edited + (1 − m)·input per pixel (u8, rounded), so black pixels are the
 * input's own bytes and white pixels the model's.
 * Host code in f64 for the mask, f32 (rounded per op like torch) for the latent blend.
 */
import { ExitCode, Step1xError } from '../errors.js';
import type { RgbImage } from '../io/resize.js';

/** A single-channel mask, values in [0, 1], row-major [height, width]. */
export interface Mask {
  width: number;
  height: number;
  data: Float64Array;
}

/** PIL `convert("L")` weights, scaled to [0, 1]. */
export function maskFromRgb(img: RgbImage): Mask {
  const n = img.width * img.height;
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = (299 * img.data[3 * i] + 587 * img.data[3 * i + 1] + 114 * img.data[3 * i + 2]) / 1000 / 255;
  return { width: img.width, height: img.height, data };
}

/** Weights of output sample `o` over source samples for a 1-D resize of `n` → `m`. */
function weights1d(n: number, m: number): { start: number; w: number[] }[] {
  const out: { start: number; w: number[] }[] = [];
  if (m <= n) {
    // area: output o covers source interval [o·s, (o+1)·s)
    const s = n / m;
    for (let o = 0; o < m; o++) {
      const a = o * s, b = (o + 1) * s;
      const start = Math.floor(a), end = Math.min(n, Math.ceil(b));
      const w: number[] = [];
      for (let k = start; k < end; k++) w.push((Math.min(b, k + 1) - Math.max(a, k)) / s);
      out.push({ start, w });
    }
  } else {
    // bilinear on pixel centres, edges clamped
    const s = n / m;
    for (let o = 0; o < m; o++) {
      const x = Math.min(n - 1, Math.max(0, (o + 0.5) * s - 0.5));
      const k = Math.min(n - 2, Math.floor(x));
      if (n === 1) out.push({ start: 0, w: [1] });
      else out.push({ start: k, w: [1 - (x - k), x - k] });
    }
  }
  return out;
}

/** Separable resize (area when shrinking, bilinear when growing) of a mask to width × height. */
export function resizeMask(m: Mask, width: number, height: number): Mask {
  if (m.width === width && m.height === height) return { width, height, data: m.data.slice() };
  const wx = weights1d(m.width, width), wy = weights1d(m.height, height);
  const tmp = new Float64Array(m.height * width);
  for (let y = 0; y < m.height; y++)
    for (let x = 0; x < width; x++) {
      const { start, w } = wx[x];
      let s = 0;
      for (let k = 0; k < w.length; k++) s += w[k] * m.data[y * m.width + start + k];
      tmp[y * width + x] = s;
    }
  const data = new Float64Array(width * height);
  for (let y = 0; y < height; y++) {
    const { start, w } = wy[y];
    for (let x = 0; x < width; x++) {
      let s = 0;
      for (let k = 0; k < w.length; k++) s += w[k] * tmp[(start + k) * width + x];
      data[y * width + x] = Math.min(1, Math.max(0, s));
    }
  }
  return { width, height, data };
}

/** Normalised Gaussian taps for feather radius `px` (σ = px / 2, taps −px..px). */
export function featherKernel(px: number): Float64Array {
  const r = Math.ceil(px), sigma = px / 2;
  const k = new Float64Array(2 * r + 1);
  let s = 0;
  for (let i = -r; i <= r; i++) s += k[i + r] = Math.exp(-(i * i) / (2 * sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i] /= s;
  return k;
}

/** Separable Gaussian feather (edges clamped); px = 0 returns a copy. */
export function featherMask(m: Mask, px: number): Mask {
  if (!(px > 0)) return { ...m, data: m.data.slice() };
  const k = featherKernel(px), r = (k.length - 1) / 2;
  const { width: W, height: H } = m;
  const clamp = (v: number, n: number) => (v < 0 ? 0 : v >= n ? n - 1 : v);
  const tmp = new Float64Array(W * H), data = new Float64Array(W * H);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      let s = 0;
      for (let i = -r; i <= r; i++) s += k[i + r] * m.data[y * W + clamp(x + i, W)];
      tmp[y * W + x] = s;
    }
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      let s = 0;
      for (let i = -r; i <= r; i++) s += k[i + r] * tmp[clamp(y + i, H) * W + x];
      data[y * W + x] = Math.min(1, Math.max(0, s));
    }
  return { width: W, height: H, data };
}

/** Mask at the latent grid lh × lw → per-value weights of the packed noisy half [N, C·4] (f32). */
export function packedMask(latentMask: Mask, channels = 16): Float32Array {
  const { width: lw, height: lh } = latentMask;
  if (lh % 2 || lw % 2) throw new Step1xError(`mask: latent grid ${lw}x${lh} must be even`, ExitCode.USAGE);
  const h = lh / 2, w = lw / 2, D = channels * 4;
  const out = new Float32Array(h * w * D);
  for (let i = 0; i < h; i++)
    for (let j = 0; j < w; j++)
      for (let c = 0; c < channels; c++)
        for (let ph = 0; ph < 2; ph++)
          for (let pw = 0; pw < 2; pw++) out[(i * w + j) * D + c * 4 + ph * 2 + pw] = latentMask.data[(2 * i + ph) * lw + 2 * j + pw];
  return out;
}

const fr = Math.fround;

/**
 * In place on the noisy half x [N·C] after the step to t_next:
 * x = m·x + (1 − m)·(t_next·noise + (1 − t_next)·z_src), each op rounded to f32 as torch does.
 */
export function blendLatent(x: Float32Array, m: Float32Array, noise: Float32Array, zSrc: Float32Array, tNext: number): void {
  const n = m.length;
  if (x.length < n || noise.length !== n || zSrc.length !== n) throw new Step1xError(`mask blend: sizes x ${x.length}, mask ${n}, noise ${noise.length}, source ${zSrc.length}`, ExitCode.GPU);
  const t = fr(tNext), u = fr(1 - t);
  for (let i = 0; i < n; i++) {
    const proper = fr(fr(t * noise[i]) + fr(u * zSrc[i]));
    x[i] = fr(fr(fr(1 - m[i]) * proper) + fr(m[i] * x[i]));
  }
}

/** out = m·edited + (1 − m)·input per pixel, rounded to u8 (m = 0 → input bytes, m = 1 → edited bytes). */
export function compositeImage(edited: RgbImage, input: RgbImage, m: Mask): RgbImage {
  const { width: W, height: H } = edited;
  if (input.width !== W || input.height !== H || m.width !== W || m.height !== H)
    throw new Step1xError(`mask composite: edited ${W}x${H}, input ${input.width}x${input.height}, mask ${m.width}x${m.height} must match`, ExitCode.GPU);
  const data = new Uint8Array(W * H * 3);
  for (let p = 0; p < W * H; p++) {
    const a = m.data[p];
    for (let c = 0; c < 3; c++) {
      const i = 3 * p + c;
      data[i] = a <= 0 ? input.data[i] : a >= 1 ? edited.data[i] : Math.round(a * edited.data[i] + (1 - a) * input.data[i]);
    }
  }
  return { width: W, height: H, data };
}

/** The mask of an edit: the user's mask at the photo size, feathered. */
export function prepareMask(maskImg: RgbImage, photoW: number, photoH: number, featherPx = 0): Mask {
  if (!(featherPx >= 0) || !Number.isFinite(featherPx)) throw new Step1xError(`--mask-feather must be a number of pixels >= 0, got ${featherPx}`, ExitCode.USAGE);
  return featherMask(resizeMask(maskFromRgb(maskImg), photoW, photoH), featherPx);
}

/** Fraction of the mask that may change (for messages: an all-black mask keeps the input). */
export function maskCoverage(m: Mask): number {
  let s = 0;
  for (let i = 0; i < m.data.length; i++) s += m.data[i];
  return m.data.length ? s / m.data.length : 0;
}

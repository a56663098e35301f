/**
 * Host-side packing and position ids of `ImageGenerator.prepare` / `unpack` (inference.py).
 *
 * Latents are [B, C, H, W] (C = 16, H, W = image size / 8). Packing is the einops pattern
 * `b c (h ph) (w pw) -> b (h w) (c ph pw)` with ph = pw = 2: token (i, j) of the h×w grid holds the
 * 2×2 patch of every channel, channel-major (c, ph, pw) within its C·4 = 64 values.
 * Ids: image token (i, j) gets (0, i, j); reference tokens get the SAME ids in v1.0 and (1, 1 + i, 1 + j)
 * in v1.1 (`torch.ones` + aranges in the current `prepare`); text ids are all zero. The DiT concatenates
 * ids as [txt, img]. Text-to-image (`prepare_t2i`) packs the noise tokens alone.
 * These arrays are small (1024² image: 16×128×128 latent = 1 MiB) so they stay on the host; GPU
 * versions (`pack2x2` / `unpack2x2` in ops/layout.ts) exist for callers that already hold tensors.
 */
import { fail, fmtShape } from '../errors.js';
import type { DitVersion } from '../models/dit-config.js';

/** `b c (h 2) (w 2) -> b (h w) (c 2 2)`: latent [B, C, H, W] → tokens [B, (H/2)(W/2), 4C]. */
export function pack2x2Host(latent: Float32Array, shape: readonly number[]): Float32Array {
  const [B, C, H, W] = shape;
  if (shape.length !== 4 || H % 2 || W % 2 || latent.length !== B * C * H * W)
    fail(`pack2x2Host: latent ${fmtShape(shape)} (${latent.length} values) must be [B, C, H, W] with even H, W`);
  const h = H / 2, w = W / 2, D = C * 4;
  const out = new Float32Array(latent.length);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < h; i++)
      for (let j = 0; j < w; j++)
        for (let c = 0; c < C; c++)
          for (let ph = 0; ph < 2; ph++)
            for (let pw = 0; pw < 2; pw++)
              out[((b * h + i) * w + j) * D + c * 4 + ph * 2 + pw] = latent[((b * C + c) * H + 2 * i + ph) * W + 2 * j + pw];
  return out;
}

/** `b (h w) (c 2 2) -> b c (h 2) (w 2)`: tokens [B, h·w, 4C] → latent [B, C, 2h, 2w]. */
export function unpack2x2Host(tokens: Float32Array, B: number, C: number, h: number, w: number): Float32Array {
  if (tokens.length !== B * h * w * C * 4)
    fail(`unpack2x2Host: ${tokens.length} values is not [${B}, ${h}*${w}, ${C}*4]`);
  const H = 2 * h, W = 2 * w, D = C * 4;
  const out = new Float32Array(tokens.length);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < h; i++)
      for (let j = 0; j < w; j++)
        for (let c = 0; c < C; c++)
          for (let ph = 0; ph < 2; ph++)
            for (let pw = 0; pw < 2; pw++)
              out[((b * C + c) * H + 2 * i + ph) * W + 2 * j + pw] = tokens[((b * h + i) * w + j) * D + c * 4 + ph * 2 + pw];
  return out;
}

/**
 * `ImageGenerator.unpack(x, height, width)` for an image of height×width pixels: the packed grid is
 * ceil(height/16) × ceil(width/16). Returns the latent [B, C, 2h, 2w] and its shape.
 */
export function unpackForImage(tokens: Float32Array, B: number, height: number, width: number, C = 16): { latent: Float32Array; shape: number[] } {
  const h = Math.ceil(height / 16), w = Math.ceil(width / 16);
  return { latent: unpack2x2Host(tokens, B, C, h, w), shape: [B, C, 2 * h, 2 * w] };
}

/** Image ids [B, h·w, 3]: (base, base + row, base + col) per packed token, row-major (base 0 = the noise tokens' ids). */
export function imageIds(B: number, h: number, w: number, base = 0): Float32Array {
  const out = new Float32Array(B * h * w * 3);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < h; i++)
      for (let j = 0; j < w; j++) {
        const o = ((b * h + i) * w + j) * 3;
        out[o] = base;
        out[o + 1] = base + i;
        out[o + 2] = base + j;
      }
  return out;
}

/** Base of the reference tokens' ids: 0 in v1.0 (the noise tokens' ids), 1 in v1.1. */
export const refIdBase = (version: 'v1.0' | 'v1.1'): number => (version === 'v1.1' ? 1 : 0);

/** Reference tokens' ids [h·w, 3]: v1.0 (0, i, j), v1.1 (1, 1 + i, 1 + j), v1.2 (1, i, j) (the fork's `_prepare_latent_image_ids` with index 1). */
export function referenceIds(h: number, w: number, version: DitVersion): Float32Array {
  if (version !== 'v1.2') return imageIds(1, h, w, refIdBase(version));
  const ids = imageIds(1, h, w);
  for (let t = 0; t < h * w; t++) ids[t * 3] = 1;
  return ids;
}

/** Text ids [B, T, 3]: zeros. */
export const textIds = (B: number, T: number): Float32Array => new Float32Array(B * T * 3);

/** `image_seq_len` for get_schedule: the noisy packed tokens of a latent [.., H, W] = H·W / 4. */
export const imageSeqLen = (latentH: number, latentW: number): number => Math.floor((latentH * latentW) / 4);

export interface Prepared {
  /** [B, 2N, 64]: packed noise tokens then packed reference tokens, per batch row ([B, N, 64] for t2i). */
  img: Float32Array;
  /** [B, 2N, 3] ids of the noise tokens, then of the reference tokens (see refIdBase); [B, N, 3] for t2i. */
  imgIds: Float32Array;
  /** [B, T, 3] zeros. */
  txtIds: Float32Array;
  batch: number;
  /** Packed grid h × w (N = h·w) and the packed channel count. */
  h: number;
  w: number;
  channels: number;
  /** Whether the rows hold reference tokens after the noise tokens (edit) or noise tokens alone (t2i). */
  reference: boolean;
}

/**
 * `ImageGenerator.prepare` without the embedder: noise and reference latents [1 or B, C, H, W]
 * (a batch of 1 is repeated to `batch`, as the official code does for [prompt, negative_prompt]).
 * `version` sets the reference tokens' ids (referenceIds).
 */
export function prepare(noise: Float32Array, ref: Float32Array, latentShape: readonly number[], batch: number, txtLen: number, version: DitVersion): Prepared {
  const [b0, C, H, W] = latentShape;
  if (latentShape.length !== 4 || (b0 !== 1 && b0 !== batch))
    fail(`prepare: latent ${fmtShape(latentShape)} must be [1 or ${batch}, C, H, W]`);
  if (noise.length !== b0 * C * H * W || ref.length !== noise.length)
    fail(`prepare: noise (${noise.length}) and ref (${ref.length}) must both hold ${fmtShape(latentShape)}`);
  const x = pack2x2Host(noise, latentShape);
  const r = pack2x2Host(ref, latentShape);
  const h = H / 2, w = W / 2, N = h * w, D = C * 4;
  const img = new Float32Array(batch * 2 * N * D);
  const imgIds = new Float32Array(batch * 2 * N * 3);
  const ids = imageIds(1, h, w);
  const refIds = referenceIds(h, w, version);
  for (let b = 0; b < batch; b++) {
    const src = b0 === 1 ? 0 : b;
    img.set(x.subarray(src * N * D, (src + 1) * N * D), b * 2 * N * D);
    img.set(r.subarray(src * N * D, (src + 1) * N * D), (b * 2 + 1) * N * D);
    imgIds.set(ids, b * 2 * N * 3);
    imgIds.set(refIds, (b * 2 + 1) * N * 3);
  }
  return { img, imgIds, txtIds: textIds(batch, txtLen), batch, h, w, channels: D, reference: true };
}

/** `ImageGenerator.prepare_t2i` without the embedder: the noise latent [1 or B, C, H, W] alone, ids (0, row, col). */
export function prepareT2i(noise: Float32Array, latentShape: readonly number[], batch: number, txtLen: number): Prepared {
  const [b0, C, H, W] = latentShape;
  if (latentShape.length !== 4 || (b0 !== 1 && b0 !== batch))
    fail(`prepareT2i: latent ${fmtShape(latentShape)} must be [1 or ${batch}, C, H, W]`);
  if (noise.length !== b0 * C * H * W) fail(`prepareT2i: noise (${noise.length}) must hold ${fmtShape(latentShape)}`);
  const x = pack2x2Host(noise, latentShape);
  const h = H / 2, w = W / 2, N = h * w, D = C * 4;
  const img = new Float32Array(batch * N * D);
  const imgIds = new Float32Array(batch * N * 3);
  const ids = imageIds(1, h, w);
  for (let b = 0; b < batch; b++) {
    const src = b0 === 1 ? 0 : b;
    img.set(x.subarray(src * N * D, (src + 1) * N * D), b * N * D);
    imgIds.set(ids, b * N * 3);
  }
  return { img, imgIds, txtIds: textIds(batch, txtLen), batch, h, w, channels: D, reference: false };
}

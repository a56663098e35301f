/**
 * Step1X-Edit v1.2's DiT text ids (the fork's `_get_qwenvl_embeds` / `_get_affine_mat_from_source`): the
 * M-RoPE positions [3, L] of the kept span [keepStart, keepStart + keepLen), shifted so the last text
 * position is −1 (minus max t + 1, on all axes); text tokens get (t, 0, 0); an image token at merged-grid
 * row i, column j (its positions are (t, t + i, t + j)) gets (t, y, x) with the token centre mapped from
 * the processor-resized image (Rw × Rh) back to the reference image (Sw × Sh, align-corners) and onto
 * the packed latent grid (16 px a token):
 *   x = ((28 j + 13.5)(Sw − 1)/(Rw − 1) − 11)/16,   y likewise with i, Sh, Rh.
 * 28 = patch 14 × spatial merge 2 pixels a vision token; 13.5 its centre.
 */
const VISION_TOKEN_PX = 28;
const LATENT_TOKEN_PX = 16;
const FORK_OFFSET_PX = 11;

export interface V12TextIds {
  /** [keepLen, 3] f32 */
  posKeptShifted: Float32Array;
  /** [keepLen, 3] f32 */
  txtIds: Float32Array;
}

/**
 * `positionIds` [3, L] (get_rope_index), `visionMask` [keepLen] (1 on image-pad tokens of the kept span);
 * `ref` = [Sw, Sh] the reference image Qwen got, `resized` = [Rw, Rh] the processor's resize of it.
 */
export function v12TextIds(positionIds: Int32Array, L: number, keepStart: number, keepLen: number, visionMask: ArrayLike<number>, ref: [number, number], resized: [number, number]): V12TextIds {
  let maxT = -Infinity;
  for (let k = 0; k < keepLen; k++) maxT = Math.max(maxT, positionIds[keepStart + k]);
  const shift = maxT + 1;
  const pos = new Float32Array(keepLen * 3), ids = new Float32Array(keepLen * 3);
  const [Sw, Sh] = ref, [Rw, Rh] = resized;
  const map = (n: number, S: number, R: number) => ((VISION_TOKEN_PX * n + (VISION_TOKEN_PX - 1) / 2) * ((S - 1) / (R - 1)) - FORK_OFFSET_PX) / LATENT_TOKEN_PX;
  for (let k = 0; k < keepLen; k++) {
    const t = positionIds[keepStart + k], h = positionIds[L + keepStart + k], w = positionIds[2 * L + keepStart + k];
    pos.set([t - shift, h - shift, w - shift], 3 * k);
    ids[3 * k] = t - shift;
    if (visionMask[k]) {
      ids[3 * k + 1] = map(h - t, Sh, Rh);
      ids[3 * k + 2] = map(w - t, Sw, Rw);
    }
  }
  return { posKeptShifted: pos, txtIds: ids };
}

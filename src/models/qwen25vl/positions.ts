/**
 * Host-side index logic of Qwen2.5-VL (pure TS, no GPU), ported from transformers'
 * Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb / get_window_index and
 * Qwen2_5_VLModel.get_rope_index. The RoPE cos/sin tables themselves are ops/rope-tables.ts
 * (visionRopeCosSin, mropeCosSin).
 */
import { fail } from '../../errors.js';

/** One image's (t, h, w) grid in 14-px patches (processor output `image_grid_thw`). */
export type GridThw = readonly [number, number, number];

/**
 * (h, w) patch coordinates [N, 2] in the processor's patch order (2×2 merge blocks contiguous),
 * repeated for each temporal frame: the `pos_ids` of rot_pos_emb.
 */
export function visionRotPosIds(grids: readonly GridThw[], merge: number): Int32Array {
  let n = 0;
  for (const [t, h, w] of grids) n += t * h * w;
  const out = new Int32Array(n * 2);
  let o = 0;
  for (const [t, h, w] of grids) {
    if (h % merge || w % merge) fail(`image_grid_thw (${t}, ${h}, ${w}): h and w must be multiples of spatial_merge_size ${merge}`);
    for (let ti = 0; ti < t; ti++)
      for (let bh = 0; bh < h / merge; bh++)
        for (let bw = 0; bw < w / merge; bw++)
          for (let ih = 0; ih < merge; ih++)
            for (let iw = 0; iw < merge; iw++) {
              out[o++] = bh * merge + ih;
              out[o++] = bw * merge + iw;
            }
  }
  return out;
}

/**
 * get_window_index: permutation of merged units (`window_index`, [N / merge²]) that makes each
 * (window_size / merge / patch)² block of merged units contiguous, and the cumulative patch counts
 * of the windows after torch.unique_consecutive (`cu_window_seqlens`, starts at 0).
 */
export function getWindowIndex(
  grids: readonly GridThw[],
  windowSize: number,
  merge: number,
  patchSize: number,
): { windowIndex: Int32Array; cuWindowSeqlens: number[] } {
  const vms = Math.floor(windowSize / merge / patchSize); // merged units per window side (4)
  const unit = merge * merge;
  const index: number[] = [];
  const cu: number[] = [0];
  let base = 0;
  for (const [t, h, w] of grids) {
    const lh = Math.floor(h / merge), lw = Math.floor(w / merge);
    // torch pads by vms - (l % vms), i.e. a whole empty window row/column when divisible: those
    // windows have seqlen 0 and vanish in unique_consecutive.
    const nwh = Math.floor((lh + vms - (lh % vms)) / vms), nww = Math.floor((lw + vms - (lw % vms)) / vms);
    for (let ti = 0; ti < t; ti++)
      for (let wh = 0; wh < nwh; wh++)
        for (let ww = 0; ww < nww; ww++) {
          let count = 0;
          for (let r = wh * vms; r < wh * vms + vms; r++)
            for (let c = ww * vms; c < ww * vms + vms; c++) {
              if (r >= lh || c >= lw) continue;
              index.push(base + ti * lh * lw + r * lw + c);
              count++;
            }
          cu.push(cu[cu.length - 1] + count * unit);
        }
    base += t * lh * lw;
  }
  const uniq = cu.filter((v, i) => i === 0 || v !== cu[i - 1]);
  return { windowIndex: Int32Array.from(index), cuWindowSeqlens: uniq };
}

/** Inverse permutation (torch.argsort of a permutation). */
export function invertPermutation(perm: Int32Array): Int32Array {
  const inv = new Int32Array(perm.length).fill(-1);
  perm.forEach((p, i) => {
    if (p < 0 || p >= perm.length || inv[p] !== -1) fail(`invertPermutation: not a permutation (value ${p} at ${i})`);
    inv[p] = i;
  });
  return inv;
}

/** Per-position segment ids [n] from cumulative boundaries (cu[0] = 0, cu[last] = n). */
export function cuSeqlensToSegments(cu: readonly number[], n: number): Int32Array {
  if (cu[0] !== 0 || cu[cu.length - 1] !== n) fail(`cu_seqlens [${cu.join(',')}] must run from 0 to ${n}`);
  const seg = new Int32Array(n);
  for (let s = 0; s + 1 < cu.length; s++) seg.fill(s, cu[s], cu[s + 1]);
  return seg;
}

/** cu_seqlens of the full-attention blocks: one segment per frame (h·w patches, repeated t times). */
export function fullAttentionCuSeqlens(grids: readonly GridThw[]): number[] {
  const cu = [0];
  for (const [t, h, w] of grids) for (let i = 0; i < t; i++) cu.push(cu[cu.length - 1] + h * w);
  return cu;
}

/** Gather rows: out[i] = x[perm[i]] for row length `width` (host-side reorder of tables). */
export function permuteRows<T extends Float32Array | Int32Array>(x: T, width: number, perm: ArrayLike<number>): T {
  const out = new (x.constructor as { new (n: number): T })(perm.length * width);
  for (let i = 0; i < perm.length; i++) out.set(x.subarray(perm[i] * width, perm[i] * width + width), i * width);
  return out;
}

export interface RopeIndexOptions {
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  spatialMergeSize: number;
}

/**
 * get_rope_index for one sequence (images only). Tokens with attention mask 0 are removed before
 * numbering and get position 1 on all three axes; text is (p, p, p); an image block gets
 * (st, st + row, st + col) in merged units; text after it resumes at max + 1.
 * Returns position ids [3, L] (axis-major) and rope_delta = max + 1 - L.
 */
export function getRopeIndex(
  inputIds: Int32Array,
  attentionMask: Int32Array | null,
  imageGrids: readonly GridThw[],
  o: RopeIndexOptions,
): { positionIds: Int32Array; ropeDelta: number } {
  const L = inputIds.length;
  if (attentionMask && attentionMask.length !== L) fail(`getRopeIndex: attention_mask length ${attentionMask.length} != input_ids length ${L}`);
  const keep: number[] = [];
  for (let i = 0; i < L; i++) if (!attentionMask || attentionMask[i] === 1) keep.push(i);
  const toks = keep.map((i) => inputIds[i]);
  let imageNums = 0, videoNums = 0;
  toks.forEach((tk, i) => {
    if (tk === o.visionStartTokenId && i + 1 < toks.length) {
      if (toks[i + 1] === o.imageTokenId) imageNums++;
      if (toks[i + 1] === o.videoTokenId) videoNums++;
    }
  });
  if (videoNums) fail('getRopeIndex: video tokens are not supported');
  if (imageNums > imageGrids.length) fail(`getRopeIndex: ${imageNums} images in the ids but only ${imageGrids.length} image_grid_thw rows`);
  const pt: number[] = [], ph: number[] = [], pw: number[] = [];
  let maxPos = -1; // running max of everything appended (st_idx = max + 1)
  const push = (a: number, b: number, c: number) => {
    pt.push(a); ph.push(b); pw.push(c);
    maxPos = Math.max(maxPos, a, b, c);
  };
  let st = 0;
  for (let img = 0; img < imageNums; img++) {
    const ed = toks.indexOf(o.imageTokenId, st);
    if (ed < 0) fail('getRopeIndex: image token not found');
    const [t, h, w] = imageGrids[img];
    const gh = Math.floor(h / o.spatialMergeSize), gw = Math.floor(w / o.spatialMergeSize);
    const textLen = ed - st;
    const stIdx = maxPos + 1;
    for (let i = 0; i < textLen; i++) push(stIdx + i, stIdx + i, stIdx + i);
    // images: second_per_grid_t = 0, so the temporal index is 0 for every frame
    for (let ti = 0; ti < t; ti++)
      for (let r = 0; r < gh; r++) for (let c = 0; c < gw; c++) push(textLen + stIdx, r + textLen + stIdx, c + textLen + stIdx);
    st = ed + t * gh * gw;
  }
  if (st < toks.length) {
    const stIdx = maxPos + 1;
    for (let i = 0; i < toks.length - st; i++) push(stIdx + i, stIdx + i, stIdx + i);
  }
  if (pt.length !== toks.length) fail(`getRopeIndex: ${pt.length} positions for ${toks.length} unmasked tokens (image token count does not match image_grid_thw)`);
  const pos = new Int32Array(3 * L).fill(1);
  keep.forEach((li, k) => {
    pos[li] = pt[k];
    pos[L + li] = ph[k];
    pos[2 * L + li] = pw[k];
  });
  return { positionIds: pos, ropeDelta: maxPos + 1 - L };
}

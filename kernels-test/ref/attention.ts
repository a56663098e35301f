/**
 * Plain-TS f64 reference of src/ops/attention.ts: naive softmax(scale · q kᵀ + mask) v per row.
 * q [B, Lq, H, Dh], k/v [B, Lk, Hkv, Dh] flat; masks as in AttentionOptions (host arrays).
 * A row with no visible key, or with queryMask 0, is 0.
 */
export interface RefAttnOpts {
  scale?: number;
  causal?: boolean;
  keyMask?: ArrayLike<number>; // [B, Lk]
  mask?: ArrayLike<number>; // [B, Lq, Lk]
  segments?: ArrayLike<number>; // [Lq]
  queryMask?: ArrayLike<number>; // [B, Lq]
}

export function attentionRef(
  q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>,
  B: number, Lq: number, Lk: number, H: number, Hkv: number, Dh: number, o: RefAttnOpts = {},
): Float64Array {
  const out = new Float64Array(B * Lq * H * Dh);
  const scale = o.scale ?? 1 / Math.sqrt(Dh);
  const s = new Float64Array(Lk);
  const vis = new Uint8Array(Lk);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < Lq; i++) {
      if (o.queryMask && o.queryMask[b * Lq + i] === 0) continue;
      for (let h = 0; h < H; h++) {
        const hk = Math.floor(h / (H / Hkv));
        const qb = ((b * Lq + i) * H + h) * Dh;
        let mx = -Infinity;
        for (let j = 0; j < Lk; j++) {
          let ok = !(o.causal && j > i + Lk - Lq);
          if (o.keyMask && o.keyMask[b * Lk + j] === 0) ok = false;
          if (o.mask && o.mask[(b * Lq + i) * Lk + j] === 0) ok = false;
          if (o.segments && o.segments[i] !== o.segments[j]) ok = false;
          vis[j] = ok ? 1 : 0;
          if (!ok) continue;
          const kb = ((b * Lk + j) * Hkv + hk) * Dh;
          let d = 0;
          for (let e = 0; e < Dh; e++) d += q[qb + e] * k[kb + e];
          s[j] = d * scale;
          if (s[j] > mx) mx = s[j];
        }
        if (mx === -Infinity) continue;
        let sum = 0;
        for (let j = 0; j < Lk; j++) if (vis[j]) sum += (s[j] = Math.exp(s[j] - mx));
        for (let j = 0; j < Lk; j++) {
          if (!vis[j]) continue;
          const p = s[j] / sum, vb = ((b * Lk + j) * Hkv + hk) * Dh;
          for (let e = 0; e < Dh; e++) out[qb + e] += p * v[vb + e];
        }
      }
    }
  return out;
}

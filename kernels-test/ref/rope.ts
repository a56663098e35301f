/**
 * Plain-TS f64 references for src/ops/rope.ts and an independent, literal transcription of the torch
 * table code (structure as in transformers: three full cos tables, then split / pick / cat) to check
 * src/ops/rope-tables.ts against.
 */

/** FLUX apply_rope on [B, L, H, Dh] with pe [Bp, L, Dh/2, 2, 2]. */
export function ropeFluxRef(x: ArrayLike<number>, pe: ArrayLike<number>, B: number, L: number, H: number, Dh: number, Bp: number): Float64Array {
  const out = new Float64Array(B * L * H * Dh);
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let h = 0; h < H; h++)
        for (let i = 0; i < Dh / 2; i++) {
          const xb = ((b * L + l) * H + h) * Dh + 2 * i;
          const e = (((Bp === 1 ? 0 : b) * L + l) * (Dh / 2) + i) * 4;
          const x0 = x[xb], x1 = x[xb + 1];
          out[xb] = pe[e] * x0 + pe[e + 1] * x1;
          out[xb + 1] = pe[e + 2] * x0 + pe[e + 3] * x1;
        }
  return out;
}

/** x*cos + rotate_half(x)*sin on [B, L, H, Dh] with cos/sin [Bp, L, Dh]. */
export function ropeHalfRef(x: ArrayLike<number>, cos: ArrayLike<number>, sin: ArrayLike<number>, B: number, L: number, H: number, Dh: number, Bp: number): Float64Array {
  const out = new Float64Array(B * L * H * Dh);
  const half = Dh / 2;
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let h = 0; h < H; h++)
        for (let d = 0; d < Dh; d++) {
          const xb = ((b * L + l) * H + h) * Dh;
          const tb = ((Bp === 1 ? 0 : b) * L + l) * Dh;
          const rot = d < half ? -x[xb + d + half] : x[xb + d - half];
          out[xb + d] = x[xb + d] * cos[tb + d] + rot * sin[tb + d];
        }
  return out;
}

/** transformers M-RoPE, literally: cos3[3][B][L][Dh] from each position row, then the section split. */
export function mropeRef(pos: Int32Array, B: number, L: number, Dh: number, theta: number, section: number[]): { cos: Float64Array; sin: Float64Array } {
  const inv: number[] = [];
  for (let i = 0; i < Dh; i += 2) inv.push(Math.fround(1 / Math.fround(theta ** Math.fround(i / Dh))));
  const full = (fn: (a: number) => number) => [0, 1, 2].map((r) => {
    const t = new Float64Array(B * L * Dh);
    for (let b = 0; b < B; b++)
      for (let l = 0; l < L; l++) {
        const freqs = inv.map((f) => Math.fround(pos[(r * B + b) * L + l] * f));
        const emb = [...freqs, ...freqs];
        emb.forEach((a, d) => (t[(b * L + l) * Dh + d] = fn(a)));
      }
    return t;
  });
  const pick = (tabs: Float64Array[]) => {
    const out = new Float64Array(B * L * Dh);
    const sizes = [...section, ...section];
    for (let bl = 0; bl < B * L; bl++) {
      let start = 0;
      sizes.forEach((len, i) => {
        for (let d = start; d < start + len; d++) out[bl * Dh + d] = tabs[i % 3][bl * Dh + d];
        start += len;
      });
    }
    return out;
  };
  return { cos: pick(full(Math.cos)), sin: pick(full(Math.sin)) };
}

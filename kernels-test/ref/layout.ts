/** Plain-TS references for layout ops (index arithmetic only; values copied exactly). */
type Arr = ArrayLike<number>;

const prod = (a: readonly number[]): number => a.reduce((p, v) => p * v, 1);

function strides(shape: readonly number[]): number[] {
  const s = shape.map(() => 1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

/** Multi-index of flat position `i` in `shape`. */
function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = i % shape[k];
    i = Math.floor(i / shape[k]);
  }
  return idx;
}

export function permute(x: Arr, shape: number[], perm: number[]): Float64Array {
  const outShape = perm.map((p) => shape[p]);
  const st = strides(shape);
  const out = new Float64Array(x.length);
  for (let i = 0; i < out.length; i++) {
    const o = unravel(i, outShape);
    let src = 0;
    perm.forEach((p, k) => (src += o[k] * st[p]));
    out[i] = x[src];
  }
  return out;
}

export function concat(xs: { data: Arr; shape: number[] }[], dim: number): Float64Array {
  const outShape = [...xs[0].shape];
  outShape[dim] = xs.reduce((s, t) => s + t.shape[dim], 0);
  const out = new Float64Array(prod(outShape));
  for (let i = 0; i < out.length; i++) {
    const o = unravel(i, outShape);
    let k = 0, at = o[dim];
    while (at >= xs[k].shape[dim]) at -= xs[k++].shape[dim];
    const idx = [...o];
    idx[dim] = at;
    const st = strides(xs[k].shape);
    out[i] = xs[k].data[idx.reduce((s, v, j) => s + v * st[j], 0)];
  }
  return out;
}

export function slice(x: Arr, shape: number[], dim: number, start: number, len: number): Float64Array {
  const outShape = [...shape];
  outShape[dim] = len;
  const st = strides(shape);
  const out = new Float64Array(prod(outShape));
  for (let i = 0; i < out.length; i++) {
    const o = unravel(i, outShape);
    o[dim] += start;
    out[i] = x[o.reduce((s, v, j) => s + v * st[j], 0)];
  }
  return out;
}

/** einops `b c (h ph) (w pw) -> b (h w) (c ph pw)` written out directly (independent of permute). */
export function pack2x2(x: Arr, B: number, C: number, H: number, W: number): Float64Array {
  const h = H / 2, w = W / 2;
  const out = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let c = 0; c < C; c++)
      for (let y = 0; y < H; y++)
        for (let z = 0; z < W; z++) {
          const tok = Math.floor(y / 2) * w + Math.floor(z / 2);
          const ch = c * 4 + (y % 2) * 2 + (z % 2);
          out[(b * h * w + tok) * C * 4 + ch] = x[((b * C + c) * H + y) * W + z];
        }
  return out;
}

export function gatherRows(table: Arr, D: number, idx: Int32Array): Float64Array {
  const out = new Float64Array(idx.length * D);
  idx.forEach((r, i) => {
    for (let d = 0; d < D; d++) out[i * D + d] = table[r * D + d];
  });
  return out;
}

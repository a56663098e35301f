/** Plain-TS references for the conv family (conv2d, nearest 2x upsampling, GroupNorm), computed in f64. */

export interface ConvShape { B: number; C: number; H: number; W: number; O: number; KH: number; KW: number }

/** torch.nn.functional.conv2d on NCHW with explicit [top, bottom, left, right] zero padding. */
export function conv2d(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, s: ConvShape,
  stride: number, pad: [number, number, number, number]): { out: Float64Array; Ho: number; Wo: number } {
  const { B, C, H, W, O, KH, KW } = s;
  const [pt, pb, pl, pr] = pad;
  const Ho = Math.floor((H + pt + pb - KH) / stride) + 1, Wo = Math.floor((W + pl + pr - KW) / stride) + 1;
  const out = new Float64Array(B * O * Ho * Wo);
  for (let bi = 0; bi < B; bi++)
    for (let o = 0; o < O; o++)
      for (let oy = 0; oy < Ho; oy++)
        for (let ox = 0; ox < Wo; ox++) {
          let acc = b ? b[o] : 0;
          for (let c = 0; c < C; c++)
            for (let ky = 0; ky < KH; ky++) {
              const iy = oy * stride - pt + ky;
              if (iy < 0 || iy >= H) continue;
              for (let kx = 0; kx < KW; kx++) {
                const ix = ox * stride - pl + kx;
                if (ix < 0 || ix >= W) continue;
                acc += x[((bi * C + c) * H + iy) * W + ix] * w[((o * C + c) * KH + ky) * KW + kx];
              }
            }
          out[((bi * O + o) * Ho + oy) * Wo + ox] = acc;
        }
  return { out, Ho, Wo };
}

/** [B, C, HW] <-> [B, HW, C] */
export function toTokens(x: ArrayLike<number>, B: number, C: number, HW: number): Float64Array {
  const out = new Float64Array(B * C * HW);
  for (let b = 0; b < B; b++) for (let c = 0; c < C; c++) for (let p = 0; p < HW; p++) out[(b * HW + p) * C + c] = x[(b * C + c) * HW + p];
  return out;
}

export function upsampleNearest2x(x: ArrayLike<number>, P: number, H: number, W: number): Float64Array {
  const out = new Float64Array(P * 4 * H * W);
  for (let p = 0; p < P; p++)
    for (let y = 0; y < 2 * H; y++)
      for (let xx = 0; xx < 2 * W; xx++) out[(p * 2 * H + y) * 2 * W + xx] = x[(p * H + (y >> 1)) * W + (xx >> 1)];
  return out;
}

/** torch.nn.GroupNorm (biased variance), optional affine and trailing SiLU. */
export function groupNorm(x: ArrayLike<number>, B: number, C: number, HW: number, groups: number,
  w: ArrayLike<number> | null, b: ArrayLike<number> | null, eps: number, silu = false): Float64Array {
  const out = new Float64Array(B * C * HW);
  const Cg = C / groups, S = Cg * HW;
  for (let g = 0; g < B * groups; g++) {
    let mean = 0;
    for (let i = 0; i < S; i++) mean += x[g * S + i];
    mean /= S;
    let v = 0;
    for (let i = 0; i < S; i++) v += (x[g * S + i] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / S + eps);
    for (let i = 0; i < S; i++) {
      const c = (g % groups) * Cg + Math.floor(i / HW);
      let y = (x[g * S + i] - mean) * rstd;
      if (w && b) y = y * w[c] + b[c];
      if (silu) y = y / (1 + Math.exp(-y));
      out[g * S + i] = y;
    }
  }
  return out;
}

/**
 * The conv as the GEMM the implicit-GEMM kernel computes: per batch item, A [Ho*Wo, C*KH*KW] (im2col of x,
 * zeros in the padding) and W [O, C*KH*KW] (the weight as stored). For the f16-operand error bounds of
 * kernels-test/ref/gemm.ts.
 */
export function im2col(x: ArrayLike<number>, s: ConvShape, bi: number, stride: number, pad: [number, number, number, number]): { A: Float64Array; M: number; K: number } {
  const { C, H, W, KH, KW } = s;
  const [pt, pb, pl, pr] = pad;
  const Ho = Math.floor((H + pt + pb - KH) / stride) + 1, Wo = Math.floor((W + pl + pr - KW) / stride) + 1;
  const M = Ho * Wo, K = C * KH * KW;
  const A = new Float64Array(M * K);
  for (let oy = 0; oy < Ho; oy++)
    for (let ox = 0; ox < Wo; ox++)
      for (let c = 0; c < C; c++)
        for (let ky = 0; ky < KH; ky++)
          for (let kx = 0; kx < KW; kx++) {
            const iy = oy * stride - pt + ky, ix = ox * stride - pl + kx;
            if (iy >= 0 && iy < H && ix >= 0 && ix < W) A[(oy * Wo + ox) * K + (c * KH + ky) * KW + kx] = x[((bi * C + c) * H + iy) * W + ix];
          }
  return { A, M, K };
}

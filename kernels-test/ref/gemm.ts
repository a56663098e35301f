/** Plain-TS f64 references for the GEMM family (shaders/gemm.wgsl). Inputs are the exact values the GPU holds. */
import { silu, geluTanh, geluErf } from './elementwise.js';

export type Act = 'silu' | 'gelu_tanh' | 'gelu_erf' | undefined;

const ACTS: Record<string, (v: number) => number> = { silu, gelu_tanh: geluTanh, gelu_erf: geluErf };

/** out[m, n] = act(sum_k x[m, k] * w[n, k] + b[n]); x [M, K], w [N, K] row-major. */
export function linear(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, b?: ArrayLike<number>, act?: Act): Float64Array {
  const out = new Float64Array(M * N);
  const f = act ? ACTS[act] : (v: number) => v;
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      out[m * N + n] = f(s + (b ? b[n] : 0));
    }
  return out;
}

/** Batched a [B, M, K] x b [B|1, K, N] (bBatched = false: one b for every batch). */
export function matmul(a: ArrayLike<number>, b: ArrayLike<number>, B: number, M: number, K: number, N: number, bBatched: boolean): Float64Array {
  const out = new Float64Array(B * M * N);
  for (let z = 0; z < B; z++) {
    const bo = bBatched ? z * K * N : 0;
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[(z * M + m) * K + k] * b[bo + k * N + n];
        out[(z * M + m) * N + n] = s;
      }
  }
  return out;
}

/** Sum of |x_k * w_k| per output: the scale of f32 rounding error (used to size tolerances). */
export function absDotMax(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number): number {
  let mx = 0;
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.abs(x[m * K + k] * w[n * K + k]);
      mx = Math.max(mx, s);
    }
  return mx;
}

/**
 * Per-element error bound of an f16-operand GEMM with f32 accumulation (gemm-sgmat.wgsl): rounding x and
 * w to f16 (unit roundoff 2^-11 each) perturbs each product by at most 2^-10 |x w|, f16 subnormals
 * (|v| < 2^-14) lose up to 2^-25 absolute, the f32 accumulation adds K 2^-24 sum|x w|:
 *   |err| <= (2^-10 + K 2^-23) sum_k |x_k w_k| + 2^-24 sum_k |x_k| + 1e-6, times 1.2 through an activation.
 */
export function f16Bound(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, act?: Act): Float64Array {
  const b = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    let sx = 0;
    for (let k = 0; k < K; k++) sx += Math.abs(x[m * K + k]);
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.abs(x[m * K + k] * w[n * K + k]);
      b[m * N + n] = ((2 ** -10 + K * 2 ** -23) * s + 2 ** -24 * sx + 1e-6) * (act ? 1.2 : 1);
    }
  }
  return b;
}


/**
 * Per-element error bound of the f16→f16-config GEMM (gemm-sgmat.wgsl with RES = f16): operands rounded as
 * in f16Bound, each chunk of `chunk` k summed in f16 (every addition rounds by at most 2^-11 of the running
 * |partial| <= the chunk's sum|x w|, plus 2^-25 absolute for f16 subnormal partials), the chunks added in f32:
 *   |err| <= (2^-10 + chunk 2^-11 + K 2^-23) sum_k |x_k w_k| + 2^-24 sum_k |x_k| + K 2^-25 + 1e-6,
 * times 1.2 through an activation.
 */
export function f16ResultBound(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, chunk: number, act?: Act): Float64Array {
  const b = f16Bound(x, w, M, N, K);
  const s = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let a = 0;
      for (let k = 0; k < K; k++) a += Math.abs(x[m * K + k] * w[n * K + k]);
      s[m * N + n] = a;
    }
  for (let i = 0; i < b.length; i++) b[i] = (b[i] + Math.min(chunk, K) * 2 ** -11 * s[i] + K * 2 ** -25) * (act ? 1.2 : 1);
  return b;
}

// Element access for gemm-sgmat.wgsl (included once, after its bindings and defines): single elements of
// x, W and out, for the staging loops (common/gemm-sgmat-stage.wgsl), the f32 recompute and the epilogue.
//   reads   x_at(e), wval(n, k) = W(n, k) of the chunk (QUANT: decoded by common/quant.wgsl; else WDT f32 or
//           packed bf16/f16 pairs, rows w_ld() apart), a_val(m, k) = A(m, k) (row m of x, or with CONV the
//           gathered conv input of common/conv-gather.wgsl)
//   writes  to_out (O16: clamp to ±65504 and count in ovf[2]), store_out(e, v) at an element index of out,
//           put(m, n, s) = bias + activation (common/gemm-epilogue.wgsl), then the store (CONV: NCHW /
//           token-major with accumulation and residual)
// Defines read: XVEC, WVEC, QUANT, WDT, CONV, O16, OVEC (and, through the includes, HAS_BIAS, BDT, ACT, FMT,
// QBLOCK, BLOCKED, RESIDUAL). The x / w / out bindings are typed by these defines in gemm-sgmat.wgsl.

fn x_at(e: u32) -> f32 {
#ifdef XVEC
  return f32(x[e >> 2u][e & 3u]);
#else
  return f32(x[e]);
#endif
}

#ifdef QUANT
#include "common/quant.wgsl"

// W(n, k) of the chunk.
fn wval(n: u32, k: u32) -> f32 {
  return wquad(U.w_off + n * U.row_words, U.s_off + n * U.nb, k >> 2u)[k & 3u];
}
#else
// Packed word i of a bf16/f16 weight (two elements per word).
fn w_word(i: u32) -> u32 {
#if WDT == f32
  return 0u;
#else
#ifdef WVEC
  return w[i >> 2u][i & 3u];
#else
  return w[i];
#endif
#endif
}

fn w_at(e: u32) -> f32 {
#if WDT == f32
#ifdef WVEC
  return w[e >> 2u][e & 3u];
#else
  return w[e];
#endif
#endif
#if WDT == bf16
  return bf16_at(w_word(e >> 1u), e);
#endif
#if WDT == f16
  return f16_at(w_word(e >> 1u), e);
#endif
}

// The row stride of W in elements (conv: rows of all CT*KH*KW taps, the chunk's input channels from w_off).
fn w_ld() -> u32 {
#ifdef CONV
  return U.ldw;
#else
  return U.K;
#endif
}

// W(n, k) of the chunk.
fn wval(n: u32, k: u32) -> f32 {
  return w_at(U.w_off + n * w_ld() + k);
}
#endif

#ifdef O16
// f16 storage: out-of-range values are clamped and counted (the caller redoes the step in f32).
fn to_out(v: f32) -> f16 {
  let over = abs(v) > F16_MAX;
  if (over) { atomicAdd(&ovf[2], 1u); }
  return f16(select(v, clamp(v, -F16_MAX, F16_MAX), over));
}
#else
fn to_out(v: f32) -> f32 {
  return v;
}
#endif

fn store_out(e: u32, v: f32) {
#ifdef OVEC
  out[e >> 2u][e & 3u] = to_out(v);
#else
  out[e] = to_out(v);
#endif
}

#include "common/gemm-epilogue.wgsl"
#ifdef CONV
#include "common/conv-gather.wgsl"
#else
// A(m, k): row m of x.
fn a_val(m: u32, k: u32) -> f32 {
  return x_at(U.x_off + m * U.K + k);
}

// The finished output element (m, n).
fn put(m: u32, n: u32, s: f32) {
  store_out(U.o_off + m * U.ldo + n, finish(s, n));
}
#endif

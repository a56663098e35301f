// The GEMM epilogue every GEMM variant shares (gemm, gemm-wg, gemm-sgmat, gemm-quant): bias (f32 / bf16 /
// f16, packed two per u32) plus the fused activation, applied per output element before the store.
// Needs from the including shader: the uniform `U` with `b_off`, the `bias` binding (when HAS_BIAS), and
// common/dtype.wgsl + common/math.wgsl included before it.
// Defines: HAS_BIAS, BDT = f32 | bf16 | f16, ACT = none | silu | gelu_tanh | gelu_erf.

fn bias_at(n: u32) -> f32 {
#ifdef HAS_BIAS
  let e = U.b_off + n;
#if BDT == f32
  return bias[e];
#endif
#if BDT == bf16
  return bf16_at(bias[e >> 1u], e);
#endif
#if BDT == f16
  return f16_at(bias[e >> 1u], e);
#endif
#else
  return 0.0;
#endif
}

fn finish(s: f32, n: u32) -> f32 {
  let v = s + bias_at(n);
#if ACT == silu
  return silu_f(v);
#endif
#if ACT == gelu_tanh
  return gelu_tanh_f(v);
#endif
#if ACT == gelu_erf
  return gelu_erf_f(v);
#endif
#if ACT == none
  return v;
#endif
}

// Packed-weight decoders shared by gemm-quant.wgsl (register tile) and gemm-sgmat.wgsl (QUANT: blocks
// dequantized into the f16 workgroup tiles). Needs from the including shader: `w: array<u32>` (codes),
// `scales: array<u32>` (f16 pairs) when BLOCKED, common/dtype.wgsl, and the defines FMT = fp8_e4m3 |
// fp8_e5m2 | q8 | q4, QBLOCK, BLOCKED (q8 / q4).
// ---- decoders (bit-exact with src/io/quant.ts; fp8 NaN / Inf codes are not expected in weights) ----------
// Normal fp8 values are rebuilt as f32 bit patterns (exponent rebiased); subnormals as m * 2^-k, so no
// f32 denormal is ever formed (GPUs may flush those).
fn e4m3(b: u32) -> f32 {
  let e = (b >> 3u) & 15u;
  let m = b & 7u;
  let v = select(bitcast<f32>(((e + 120u) << 23u) | (m << 20u)), f32(m) * (1.0 / 512.0), e == 0u);
  return select(v, -v, (b & 0x80u) != 0u);
}

fn e5m2(b: u32) -> f32 {
  let e = (b >> 2u) & 31u;
  let m = b & 3u;
  let v = select(bitcast<f32>(((e + 112u) << 23u) | (m << 21u)), f32(m) * (1.0 / 65536.0), e == 0u);
  return select(v, -v, (b & 0x80u) != 0u);
}

// Codes of W(n, 4q .. 4q+3) as f32 (fp8: the values; q8 / q4: the signed integer codes).
fn wcodes(rowbase: u32, q: u32) -> vec4<f32> {
#if FMT == q4
  let v = w[rowbase + (q >> 1u)] >> ((q & 1u) * 16u);
  return vec4<f32>(f32(v & 15u), f32((v >> 4u) & 15u), f32((v >> 8u) & 15u), f32((v >> 12u) & 15u)) - 8.0;
#else
  let p = w[rowbase + q];
#if FMT == q8
  return vec4<f32>(vec4<i32>(bitcast<i32>(p << 24u) >> 24u, bitcast<i32>(p << 16u) >> 24u,
                             bitcast<i32>(p << 8u) >> 24u, bitcast<i32>(p) >> 24u));
#endif
#if FMT == fp8_e4m3
  return vec4<f32>(e4m3(p & 0xffu), e4m3((p >> 8u) & 0xffu), e4m3((p >> 16u) & 0xffu), e4m3(p >> 24u));
#endif
#if FMT == fp8_e5m2
  return vec4<f32>(e5m2(p & 0xffu), e5m2((p >> 8u) & 0xffu), e5m2((p >> 16u) & 0xffu), e5m2(p >> 24u));
#endif
#endif
}

fn wquad(rowbase: u32, sbase: u32, q: u32) -> vec4<f32> {
#ifdef BLOCKED
  let si = sbase + q / (QBLOCK / 4u);
  return wcodes(rowbase, q) * f16_at(scales[si >> 1u], si);
#else
  return wcodes(rowbase, q);
#endif
}


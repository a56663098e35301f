// Implicit-GEMM conv for gemm-sgmat.wgsl (define CONV): the conv is the GEMM
//   out[m, n] = sum_k A(m, k) * W(n, k),  m = output pixel oy*Wo + ox of one batch item (M = Ho*Wo),
//   n = output channel of the dispatch's block [o0, o0 + N), k = (c, ky, kx) = c*KH*KW + ky*KW + kx over the
//   block's input channels [c0, c0 + K/(KH*KW)),
// with A(m, k) = x(c, oy*stride - padT + ky, ox*stride - padL + kx) (0 outside the input) gathered while the
// k-tile is staged (no im2col tensor), and W the [O, CT, KH, KW] weight read row by row (row stride ldw =
// CT*KH*KW, w_off at (o0, c0)). As in conv2d.wgsl: x(c, y, x) = x[x_off + c*xs_c + y*xs_y + x*xs_x] (NCHW or
// token-major), ups = 1 convolves the nearest-2x upsampled input without materialising it, out(n, m) =
// out[o_off + n*os_o + m*os_m]; accum != 0 adds the partial sums of earlier input-channel blocks already in
// `out`, fin != 0 (the last block) adds bias(o0 + n) (b_off = o0) and res (at r_off, layout of out).
// WVEC (the op's choice when ldw, w_off and K are multiples of the vector width): W staged with vec4 loads.
// Needs from gemm-sgmat.wgsl: U (Params with the CONV fields), x (f32, scalar), out, res; bias_at from
// common/gemm-epilogue.wgsl (both included by common/gemm-sgmat-access.wgsl).

// Top-left input tap (virtual, upsampled coordinates) of output pixel m.
fn a_base(m: u32) -> vec2<i32> {
  return vec2<i32>(vec2<u32>(m / U.Wo, m % U.Wo) * U.stride) - vec2<i32>(i32(U.padT), i32(U.padL));
}

// A(m, k) for the pixel whose top-left tap is `base`.
fn a_tap(base: vec2<i32>, k: u32) -> f32 {
  let KK = U.KH * U.KW;
  let c = k / KK;
  let t = k % KK;
  let iy = base.x + i32(t / U.KW);
  let ix = base.y + i32(t % U.KW);
  let ok = iy >= 0 && ix >= 0 && iy < i32(U.H << U.ups) && ix < i32(U.W << U.ups);
  // clamped, always valid index (select keeps lanes together; the value outside is 0)
  let sy = min(u32(max(iy, 0)) >> U.ups, U.H - 1u);
  let sx = min(u32(max(ix, 0)) >> U.ups, U.W - 1u);
  return select(0.0, x[U.x_off + c * U.xs_c + sy * U.xs_y + sx * U.xs_x], ok);
}

fn a_val(m: u32, k: u32) -> f32 {
  return a_tap(a_base(m), k);
}

fn put(m: u32, n: u32, s: f32) {
  let oi = n * U.os_o + m * U.os_m;
  var v = s;
  if (U.accum != 0u) { v = out[U.o_off + oi] + v; }
  if (U.fin != 0u) {
    v = v + bias_at(n);
#ifdef RESIDUAL
    v = res[U.r_off + oi] + v;
#endif
  }
  out[U.o_off + oi] = v;
}


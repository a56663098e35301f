// Conv family: direct 2-D convolution (register-tiled) and nearest 2x upsampling.
//
// conv2d (entry `main`): out(b, o, oy, ox) = [acc_in +] sum_{c,ky,kx} x(b, c, oy*S - padT + ky, ox*S - padL + kx)
//   * W(o, c, ky, kx)  [+ bias(o) + res(b, o, oy, ox) when U.finish != 0]; taps outside the input read 0.
//   One dispatch covers one batch item, a block of output channels [o0, o0 + O) and a block of input
//   channels [c0, c0 + C) (the op splits tensors over the binding limit into such blocks). Input blocks
//   after the first start from the partial sums already in `out` (U.accum != 0): every output is then a
//   sequential f32 sum over k = (c, ky, kx) in the same order whatever the split, so split and unsplit
//   results are bitwise identical.
// Bindings: 0 uniform Params; 1 x (f32, window starting at x_off); 2 w (f32, or bf16 packed in u32, at
//   w_off; row o of the window = output channel o0 + o, row stride CT*KH*KW, column (c0 + c)*KH*KW + ...);
//   B_BIAS bias (f32 [OT], HAS_BIAS only); B_RES res (f32, layout of out, at r_off; RESIDUAL only);
//   B_OUT out (f32, window at o_off).
// Layouts: x(b, c, y, x) = x[x_off + c*H*W + y*W + x] (NCHW block) or, with IN_NHWC,
//   x[x_off + (y*W + x)*CT + c] (token-major [HW, CT], block offset folded into x_off);
//   out(o, m) = out[o_off + o*Ho*Wo + m] or, with OUT_NHWC, out[o_off + m*OT + o].
//   With UPS == 1 the kernel convolves the nearest-2x upsampled input (pixel (y, x) of the 2H x 2W image
//   is x(y/2, x/2)) without materialising it (saves the decoder's largest tensor at full resolution).
// Defines: KH, KW (kernel size), STRIDE, UPS = 0 | 1, WDT = f32 | bf16, RM (pixels per invocation), RN (output
//   channels per invocation), HAS_BIAS, RESIDUAL, IN_NHWC, OUT_NHWC, B_BIAS / B_RES / B_OUT (binding slots).
// Dispatch: workgroup 64; x (+ z*wg_x when folded) = ceil(Ho*Wo / (64*RM)) pixel tiles, y = ceil(O / RN);
//   invocation li of tile t computes pixels t*64*RM + i*64 + li, i < RM.
//   Register tiles only, no workgroup memory or barriers (barriers are costly on CPU drivers).
//
// upsample2x (entry `upsample2x`): out(p, oy, ox) = x(p, oy/2, ox/2) for planes p of a [P, H, W] block.
// Bindings: 0 uniform UpParams; 1 x (f32, at x_off); 2 out (f32, at o_off).
// Dispatch: workgroup 256, ceil(P*4*H*W / 256) groups folded into (wg_x, y).
#include "common/dtype.wgsl"

struct Params {
  C: u32, H: u32, W: u32, CT: u32,
  O: u32, Ho: u32, Wo: u32, OT: u32,
  c0: u32, o0: u32, padT: u32, padL: u32,
  x_off: u32, w_off: u32, o_off: u32, r_off: u32,
  accum: u32, finish: u32, wg_x: u32, _pad: u32,
}

#ifdef UPSAMPLE
struct UpParams { n: u32, H: u32, W: u32, x_off: u32, o_off: u32, wg_x: u32 }
@group(0) @binding(0) var<uniform> P: UpParams;
@group(0) @binding(1) var<storage, read> ux: array<f32>;
@group(0) @binding(2) var<storage, read_write> uout: array<f32>;

@compute @workgroup_size(256)
fn upsample2x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * P.wg_x + wid.x) * 256u + li;
  if (i >= P.n) { return; }
  let W2 = 2u * P.W;
  let plane = i / (2u * P.H * W2);
  let r = i % (2u * P.H * W2);
  let oy = r / W2;
  let ox = r % W2;
  uout[P.o_off + i] = ux[P.x_off + plane * P.H * P.W + (oy / 2u) * P.W + ox / 2u];
}
#else
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if WDT == bf16
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn wload(i: u32) -> f32 { return bf16_at(w[i >> 1u], i); }
#else
@group(0) @binding(2) var<storage, read> w: array<f32>;
fn wload(i: u32) -> f32 { return w[i]; }
#endif
#ifdef HAS_BIAS
@group(0) @binding(B_BIAS) var<storage, read> bias: array<f32>;
#endif
#ifdef RESIDUAL
@group(0) @binding(B_RES) var<storage, read> res: array<f32>;
#endif
@group(0) @binding(B_OUT) var<storage, read_write> out: array<f32>;

// (iy, ix) are coordinates in the (virtually upsampled, UPS == 1) input of size (H << UPS, W << UPS).
fn xload(c: u32, iy: i32, ix: i32) -> f32 {
  if (iy < 0 || ix < 0 || iy >= i32(U.H << UPS) || ix >= i32(U.W << UPS)) { return 0.0; }
  let sy = u32(iy) >> UPS;
  let sx = u32(ix) >> UPS;
#ifdef IN_NHWC
  return x[U.x_off + (sy * U.W + sx) * U.CT + c];
#else
  return x[U.x_off + c * U.H * U.W + sy * U.W + sx];
#endif
}

fn out_index(o: u32, m: u32) -> u32 {
#ifdef OUT_NHWC
  return m * U.OT + o;
#else
  return o * U.Ho * U.Wo + m;
#endif
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let M = U.Ho * U.Wo;
  // pixel i of this invocation is tile + i*64 + li: neighbouring lanes touch neighbouring pixels
  // (coalesced on GPUs, contiguous vector lanes on CPU drivers)
  let mbase = (wid.z * U.wg_x + wid.x) * 64u * RM + li;
  let nbase = wid.y * RN;
  if (mbase >= M) { return; }
  // top-left input tap of each of this invocation's RM output pixels
  var iy0: array<i32, RM>;
  var ix0: array<i32, RM>;
  for (var i = 0u; i < RM; i++) {
    let m = min(mbase + i * 64u, M - 1u);
    iy0[i] = i32((m / U.Wo) * STRIDE) - i32(U.padT);
    ix0[i] = i32((m % U.Wo) * STRIDE) - i32(U.padL);
  }
  var acc: array<array<f32, RN>, RM>;
  for (var i = 0u; i < RM; i++) {
    for (var j = 0u; j < RN; j++) {
      let m = mbase + i * 64u;
      let n = nbase + j;
      if (U.accum != 0u && m < M && n < U.O) { acc[i][j] = out[U.o_off + out_index(n, m)]; } else { acc[i][j] = 0.0; }
    }
  }
  let KK = u32(KH * KW);
  let wrow = U.CT * KK;
  // clamp rows past O onto the last valid one: their sums are computed but never stored
  var wbase: array<u32, RN>;
  for (var j = 0u; j < RN; j++) { wbase[j] = U.w_off + min(nbase + j, U.O - 1u) * wrow + U.c0 * KK; }
  for (var c = 0u; c < U.C; c++) {
    for (var ky = 0; ky < KH; ky++) {
      for (var kx = 0; kx < KW; kx++) {
        var xv: array<f32, RM>;
        for (var i = 0u; i < RM; i++) { xv[i] = xload(c, iy0[i] + ky, ix0[i] + kx); }
        let kofs = c * KK + u32(ky * KW + kx);
        for (var j = 0u; j < RN; j++) {
          let wv = wload(wbase[j] + kofs);
          for (var i = 0u; i < RM; i++) { acc[i][j] = acc[i][j] + xv[i] * wv; }
        }
      }
    }
  }
  for (var i = 0u; i < RM; i++) {
    let m = mbase + i * 64u;
    if (m >= M) { continue; }
    for (var j = 0u; j < RN; j++) {
      let n = nbase + j;
      if (n >= U.O) { continue; }
      var v = acc[i][j];
      let oi = out_index(n, m);
      if (U.finish != 0u) {
#ifdef HAS_BIAS
        v = v + bias[U.o0 + n];
#endif
#ifdef RESIDUAL
        v = res[U.r_off + oi] + v;
#endif
      }
      out[U.o_off + oi] = v;
    }
  }
}
#endif

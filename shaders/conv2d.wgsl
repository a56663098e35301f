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
//   B_BIAS bias (f32 [O_all], HAS_BIAS only); B_RES res (f32, layout of out, at r_off; RESIDUAL only);
//   B_OUT out (f32, window at o_off).
// Layouts (uniform strides, so one pipeline serves every layout): x(c, y, x) = x[x_off + c*xs_c + y*xs_y +
//   x*xs_x] (NCHW block: H*W, W, 1; token-major [HW, CT]: 1, W*CT, CT with the block's first channel folded
//   into x_off); out(o, m) = out[o_off + o*os_o + m*os_m] (NCHW: Ho*Wo, 1; token-major: 1, O_all).
//   `stride` is the conv stride; with ups == 1 the kernel convolves the nearest-2x upsampled input (pixel
//   (y, x) of the 2H x 2W image is x(y/2, x/2)) without materialising it (saves the decoder's largest
//   tensor). Kernel size KH x KW is a uniform too (unrolled 3x3 taps doubled CPU drivers' compile time).
// Defines: WDT = f32 | bf16, RN = 4 | 8 (output channels per invocation; each invocation computes 4
//   pixels), HAS_BIAS, RESIDUAL, B_BIAS / B_RES / B_OUT (binding slots).
// Dispatch: workgroup 64; x (+ z*wg_x when folded) = ceil(Ho*Wo / 256) pixel tiles, y = ceil(O / RN);
//   invocation li of tile t computes pixels t*256 + i*64 + li, i < 4.
//   Register tiles only, no workgroup memory or barriers (barriers are costly on CPU drivers).
//
// upsample2x (entry `upsample2x`): out(p, oy, ox) = x(p, oy/2, ox/2) for planes p of a [P, H, W] block.
// Bindings: 0 uniform UpParams; 1 x (f32, at x_off); 2 out (f32, at o_off).
// Dispatch: workgroup 256, ceil(P*4*H*W / 256) groups folded into (wg_x, y).
#include "common/dtype.wgsl"

struct Params {
  C: u32, H: u32, W: u32, CT: u32,
  O: u32, Ho: u32, Wo: u32, O_all: u32,
  c0: u32, o0: u32, padT: u32, padL: u32,
  x_off: u32, w_off: u32, o_off: u32, r_off: u32,
  accum: u32, finish: u32, wg_x: u32, KH: u32,
  KW: u32, stride: u32, ups: u32, xs_c: u32,
  xs_y: u32, xs_x: u32, os_o: u32, os_m: u32,
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

// (iy, ix) are coordinates in the (virtually upsampled when ups == 1) input of size (H << ups, W << ups).
// Branch-free (select on a clamped, always valid index): keeps SIMD lanes together on CPU drivers.
fn xload(c: u32, iy: i32, ix: i32) -> f32 {
  let ok = iy >= 0 && ix >= 0 && iy < i32(U.H << U.ups) && ix < i32(U.W << U.ups);
  let sy = min(u32(max(iy, 0)) >> U.ups, U.H - 1u);
  let sx = min(u32(max(ix, 0)) >> U.ups, U.W - 1u);
  let v = x[U.x_off + c * U.xs_c + sy * U.xs_y + sx * U.xs_x];
  return select(0.0, v, ok);
}

fn out_index(o: u32, m: u32) -> u32 {
  return o * U.os_o + m * U.os_m;
}

// Partial sum of output channel n at pixel m (0 for the first input block or outside the output).
fn acc1(n: u32, m: u32, M: u32) -> f32 {
  if (U.accum == 0u || n >= U.O || m >= M) { return 0.0; }
  return out[U.o_off + out_index(n, m)];
}

fn acc_init(n: u32, mb: u32, M: u32) -> vec4<f32> {
  return vec4<f32>(acc1(n, mb, M), acc1(n, mb + 64u, M), acc1(n, mb + 128u, M), acc1(n, mb + 192u, M));
}

fn store1(n: u32, m: u32, M: u32, a: f32) {
  if (n >= U.O || m >= M) { return; }
  var v = a;
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

fn store(n: u32, mb: u32, M: u32, a: vec4<f32>) {
  store1(n, mb, M, a.x);
  store1(n, mb + 64u, M, a.y);
  store1(n, mb + 128u, M, a.z);
  store1(n, mb + 192u, M, a.w);
}

// Each invocation: 4 pixels (mb + 64*i, so neighbouring lanes touch neighbouring pixels: coalesced on
// GPUs, contiguous vector lanes on CPU drivers) x RN output channels, in vec4 registers (explicit
// variables rather than arrays: arrays made CPU drivers' compile time explode).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let M = U.Ho * U.Wo;
  let mb = (wid.z * U.wg_x + wid.x) * 256u + li;
  let nb = wid.y * RN;
  if (mb >= M) { return; }
  let mv = min(vec4<u32>(mb) + vec4<u32>(0u, 64u, 128u, 192u), vec4<u32>(M - 1u));
  // top-left input tap of the 4 output pixels
  let iy0 = vec4<i32>((mv / U.Wo) * U.stride) - vec4<i32>(i32(U.padT));
  let ix0 = vec4<i32>((mv % U.Wo) * U.stride) - vec4<i32>(i32(U.padL));
  let KK = U.KH * U.KW;
  let wrow = U.CT * KK;
  let wb = U.w_off + U.c0 * KK;
  // rows past O are clamped onto the last valid one: computed, never stored
  let last = U.O - 1u;
  var a0 = acc_init(nb, mb, M);
  var a1 = acc_init(nb + 1u, mb, M);
  var a2 = acc_init(nb + 2u, mb, M);
  var a3 = acc_init(nb + 3u, mb, M);
  let w0 = wb + min(nb, last) * wrow;
  let w1 = wb + min(nb + 1u, last) * wrow;
  let w2 = wb + min(nb + 2u, last) * wrow;
  let w3 = wb + min(nb + 3u, last) * wrow;
#if RN == 8
  var a4 = acc_init(nb + 4u, mb, M);
  var a5 = acc_init(nb + 5u, mb, M);
  var a6 = acc_init(nb + 6u, mb, M);
  var a7 = acc_init(nb + 7u, mb, M);
  let w4 = wb + min(nb + 4u, last) * wrow;
  let w5 = wb + min(nb + 5u, last) * wrow;
  let w6 = wb + min(nb + 6u, last) * wrow;
  let w7 = wb + min(nb + 7u, last) * wrow;
#endif
  for (var c = 0u; c < U.C; c++) {
    for (var ky = 0u; ky < U.KH; ky++) {
      let iy = iy0 + vec4<i32>(i32(ky));
      for (var kx = 0u; kx < U.KW; kx++) {
        let ix = ix0 + vec4<i32>(i32(kx));
        let xv = vec4<f32>(xload(c, iy.x, ix.x), xload(c, iy.y, ix.y), xload(c, iy.z, ix.z), xload(c, iy.w, ix.w));
        let k = c * KK + ky * U.KW + kx;
        a0 = a0 + xv * wload(w0 + k);
        a1 = a1 + xv * wload(w1 + k);
        a2 = a2 + xv * wload(w2 + k);
        a3 = a3 + xv * wload(w3 + k);
#if RN == 8
        a4 = a4 + xv * wload(w4 + k);
        a5 = a5 + xv * wload(w5 + k);
        a6 = a6 + xv * wload(w6 + k);
        a7 = a7 + xv * wload(w7 + k);
#endif
      }
    }
  }
  store(nb, mb, M, a0);
  store(nb + 1u, mb, M, a1);
  store(nb + 2u, mb, M, a2);
  store(nb + 3u, mb, M, a3);
#if RN == 8
  store(nb + 4u, mb, M, a4);
  store(nb + 5u, mb, M, a5);
  store(nb + 6u, mb, M, a6);
  store(nb + 7u, mb, M, a7);
#endif
}
#endif

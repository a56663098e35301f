#ifdef F16
enable f16;
#endif
// FLUX QK-norm + RoPE in one pass: per head row x[b, l, h, 0..DH) (f32, a qkv GEMM's q or k output)
//   n[c]  = x[c] * rsqrt(mean(x²) + eps) * w[c]                 (RMSNorm over DH, as norm.wgsl rms_norm)
//   out[2i] = pe[i,0,0]*n[2i] + pe[i,0,1]*n[2i+1], out[2i+1] = pe[i,1,0]*n[2i] + pe[i,1,1]*n[2i+1]  (apply_rope)
// written to token row (o_off-relative) l of out, so a stream's q/k land straight in its rows of the joint
// [txt ‖ img] tensor: no normed or roped intermediate and no concat pass.
//
// Same f32 arithmetic as rms_norm then rope (norm.wgsl, rope.wgsl): the squares are summed per lane over
// c = li, li+WG, ... and tree-reduced; for DH <= 128 the 64-lane tree adds the same partial sums in the same
// order as rms_norm's 256-lane tree (its extra lanes hold 0), so the result is bit-identical there.
//
// Bindings: 0 uniform Params; 1 x; 2 w (W_DT f32|bf16|f16, W_AT its widening fn); 3 pe; 4 out (rw);
//   5 (O16) ovf. f16 activation storage (src/ops/act-dtype.ts; F16 enables the extension): X16 x stored f16
//   (the sums stay f32), O16 out stored f16 with out-of-range values clamped and counted in ovf word 2.
// Params (element offsets into the bound views, batch strides in elements; pe_bs = 0 broadcasts the table):
//   rows = nb * nl * heads, nl tokens per batch item, heads, dh, x_off, x_bs, o_off, o_bs, pe_off, pe_bs, wg_x, eps.
// Dispatch: one workgroup of 64 per head row, rows folded into (wg_x, y): row = wid.y * wg_x + wid.x.
#include "common/dtype.wgsl"

const WG: u32 = 64u;

struct Params {
  rows: u32, nl: u32, heads: u32, dh: u32,
  x_off: u32, x_bs: u32, o_off: u32, o_bs: u32,
  pe_off: u32, pe_bs: u32, wg_x: u32, eps: f32,
}
@group(0) @binding(0) var<uniform> U: Params;
#ifdef X16
@group(0) @binding(1) var<storage, read> x: array<f16>;
fn ldx(i: u32) -> f32 { return f32(x[i]); }
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
fn ldx(i: u32) -> f32 { return x[i]; }
#endif
#if W_DT == f32
@group(0) @binding(2) var<storage, read> w: array<f32>;
fn ldw(i: u32) -> f32 { return w[i]; }
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn ldw(i: u32) -> f32 { return W_AT(w[i >> 1u], i); }
#endif
@group(0) @binding(3) var<storage, read> pe: array<f32>;
#ifdef O16
@group(0) @binding(4) var<storage, read_write> out: array<f16>;
@group(0) @binding(5) var<storage, read_write> ovf: array<atomic<u32>>;
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
#include "common/f16-store.wgsl"

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = wid.y * U.wg_x + wid.x;
  if (row >= U.rows) { return; }   // workgroup-uniform
  let h = row % U.heads;
  let t = row / U.heads;           // b * nl + l
  let b = t / U.nl;
  let l = t % U.nl;
  let xb = U.x_off + b * U.x_bs + (l * U.heads + h) * U.dh;
  let ob = U.o_off + b * U.o_bs + (l * U.heads + h) * U.dh;
  let pb = U.pe_off + b * U.pe_bs + l * 2u * U.dh;
  var q = 0.0;
  for (var c = li; c < U.dh; c += WG) { let v = ldx(xb + c); q += v * v; }
  red[li] = q;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  let r = inverseSqrt(red[0] / f32(U.dh) + U.eps);
  for (var i = li; 2u * i < U.dh; i += WG) {
    let n0 = ldx(xb + 2u * i) * r * ldw(2u * i);
    let n1 = ldx(xb + 2u * i + 1u) * r * ldw(2u * i + 1u);
    let e = pb + 4u * i;
    out[ob + 2u * i] = to_out(pe[e] * n0 + pe[e + 1u] * n1);
    out[ob + 2u * i + 1u] = to_out(pe[e + 2u] * n0 + pe[e + 3u] * n1);
  }
}

#ifdef F16
enable f16;
#endif
// Rotary position embeddings on token-major heads x [NB, L, H, DH] (f32), one invocation per rotated pair.
// Bindings: 0 uniform Params; 1 x; 2 table(s); 3 (HALF only) sin; last: out [NB, L, H, DH].
//   FLUX  (OP == flux): pe [NB|1, L, DH/2, 2, 2]; pair (x[2i], x[2i+1]):
//         out[2i] = pe[i,0,0]*x0 + pe[i,0,1]*x1, out[2i+1] = pe[i,1,0]*x0 + pe[i,1,1]*x1  (flux apply_rope)
//   HALF  (OP == half): cos, sin [NB|1, L, DH]; pair (x[i], x[i+DH/2]), i < DH/2 (rotate_half, transformers):
//         out[i] = x[i]*cos[i] - x[i+DH/2]*sin[i], out[i+DH/2] = x[i+DH/2]*cos[i+DH/2] + x[i]*sin[i+DH/2]
// Defines: OP = flux | half. Uniforms: n pairs, L, H, half = DH/2, tbl_row (floats per token: 2*DH for
//   flux, DH for half), tbl_bstride (0 when the table broadcasts over the batch, else L*tbl_row), wg_x.
// f16 activation storage (src/ops/act-dtype.ts; F16 enables the extension): X16 x stored f16, O16 out stored
//   f16 with out-of-range values clamped and counted in ovf (B_OVF, after out) word 2; tables stay f32.
// Dispatch: ceil(n / 256) workgroups of 256, folded into (wg_x, y) under maxComputeWorkgroupsPerDimension.
struct Params { n: u32, l: u32, h: u32, half: u32, tbl_row: u32, tbl_bstride: u32, wg_x: u32 }
@group(0) @binding(0) var<uniform> U: Params;
#ifdef X16
@group(0) @binding(1) var<storage, read> x: array<f16>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
#ifdef O16
#define OT f16
@group(0) @binding(B_OVF) var<storage, read_write> ovf: array<atomic<u32>>;
#else
#define OT f32
#endif
#if OP == flux
@group(0) @binding(2) var<storage, read> pe: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<OT>;
#else
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read> sn: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<OT>;
#endif
#include "common/f16-store.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let p = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (p >= U.n) { return; }
  let i = p % U.half;            // pair index within the head
  let bl = p / (U.half * U.h);   // token row (b * L + l)
  let b = bl / U.l;
  let l = bl % U.l;
  let head = (p / U.half) * (2u * U.half);   // start of this (b, l, h) head in x / out
  let trow = b * U.tbl_bstride + l * U.tbl_row;   // start of this token's table row
#if OP == flux
  let x0 = f32(x[head + 2u * i]);
  let x1 = f32(x[head + 2u * i + 1u]);
  let e = trow + 4u * i;
  out[head + 2u * i] = to_out(pe[e] * x0 + pe[e + 1u] * x1);
  out[head + 2u * i + 1u] = to_out(pe[e + 2u] * x0 + pe[e + 3u] * x1);
#else
  let x0 = f32(x[head + i]);
  let x1 = f32(x[head + i + U.half]);
  out[head + i] = to_out(x0 * cs[trow + i] - x1 * sn[trow + i]);
  out[head + i + U.half] = to_out(x1 * cs[trow + i + U.half] + x0 * sn[trow + i + U.half]);
#endif
}

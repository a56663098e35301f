#ifdef F16
enable f16;
#endif
// Row normalisations (one workgroup per row) and the token-wise modulation ops of the DiT.
//
// Entry `main` — row reductions over x viewed as [rows, C] (C = last dim, any size incl. 1, 3, 17, 5120):
//   OP = layer_norm : (x - mean) * rsqrt(var + eps) [* w] [+ b]   (biased var, two passes in f32)
//   OP = rms_norm   : x * rsqrt(mean(x²) + eps) * w
//   OP = softmax    : exp(x - max) / sum(exp(x - max))
//   MOD (layer_norm only): then out = (1 + scale[b, c]) * n + shift[b, c], n the normalised value above and
//                b = (row0 + row) / L: layerNormModulate, one pass instead of layerNorm + modulate (the
//                normalised tensor never goes through memory; same f32 arithmetic)
//   Bindings: 0 uniform {rows, C, wg_x, eps:f32, L, row0}; 1 x (f32); 2 out (f32, rw);
//             3 w (HAS_W; W_DT f32|bf16|f16, W_AT its widening fn); B_BINDING b (HAS_B; B_DT, B_AT likewise);
//             MOD: B_SHIFT shift [B, C] f32, B_SCALE scale [B, C] f32.
//   f16 activation storage (src/ops/act-dtype.ts; F16 enables the extension): X16 x stored f16; O16 out
//             stored f16 (layer_norm / rms_norm), out-of-range values clamped and counted in ovf (B_OVF)
//             word 2 (common/f16-store.wgsl). Statistics are f32 either way.
//   Defines: ROWS (selects this entry), OP, HAS_W, W_DT, W_AT, HAS_B, B_DT, B_AT, B_BINDING, MOD, B_SHIFT, B_SCALE.
//   Dispatch: one workgroup of 256 per row, rows folded into (wg_x, y): row = wid.y * wg_x + wid.x.
//
// Entry `ew` (define EW) — elementwise over a chunk of n elements of x viewed as [rows, C] (rows = B*L tokens):
//   OP = modulate : out = (1 + scale[b, c]) * x + shift[b, c]          b = (row0 + i / C) / L
//     Bindings: 0 uniform {n, C, L, row0, wg_x}; 1 x; 2 shift [B, C]; 3 scale [B, C]; 4 out
//   OP = gated    : out = x + gate[b, c] * y
//     Bindings: 0 uniform {n, C, L, row0, wg_x}; 1 x; 2 gate [B, C]; 3 y; 4 out
//   OP = swiglu   : out = silu(x) * y   (x = gate, y = up)
//     Bindings: 0 uniform {n, C, L, row0, wg_x}; 1 x; 2 y; 3 out
//   Y16 (gated): y stored f16 (the branch output); x, gate and out stay f32 (the residual stream).
//   Dispatch: ceil(n / 256) workgroups folded into (wg_x, y). row0 = first row of the chunk, so the
//   [B, C] operands are indexed by the global token row when the host splits x along rows.
#include "common/dtype.wgsl"

const WG: u32 = 256u;

#ifdef ROWS
struct Params { rows: u32, C: u32, wg_x: u32, eps: f32, L: u32, row0: u32 }
@group(0) @binding(0) var<uniform> U: Params;
#ifdef X16
@group(0) @binding(1) var<storage, read> x: array<f16>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
#ifdef O16
@group(0) @binding(2) var<storage, read_write> out: array<f16>;
@group(0) @binding(B_OVF) var<storage, read_write> ovf: array<atomic<u32>>;
#else
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif
#include "common/f16-store.wgsl"
fn ldx(i: u32) -> f32 { return f32(x[i]); }
#ifdef MOD
@group(0) @binding(B_SHIFT) var<storage, read> shift: array<f32>;
@group(0) @binding(B_SCALE) var<storage, read> scale: array<f32>;
#endif

#ifdef HAS_W
#if W_DT == f32
@group(0) @binding(3) var<storage, read> w: array<f32>;
fn ldw(i: u32) -> f32 { return w[i]; }
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
fn ldw(i: u32) -> f32 { return W_AT(w[i >> 1u], i); }
#endif
#else
fn ldw(i: u32) -> f32 { return 1.0; }
#endif

#ifdef HAS_B
#if B_DT == f32
@group(0) @binding(B_BINDING) var<storage, read> bias: array<f32>;
fn ldb(i: u32) -> f32 { return bias[i]; }
#else
@group(0) @binding(B_BINDING) var<storage, read> bias: array<u32>;
fn ldb(i: u32) -> f32 { return B_AT(bias[i >> 1u], i); }
#endif
#else
fn ldb(i: u32) -> f32 { return 0.0; }
#endif

var<workgroup> red: array<f32, WG>;

// Tree reduction over the workgroup; every invocation gets the result.
fn wg_sum(v: f32, li: u32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn wg_max(v: f32, li: u32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = wid.y * U.wg_x + wid.x;
  if (row >= U.rows) { return; }   // workgroup-uniform
  let C = U.C;
  let base = row * C;
#if OP == layer_norm
  var s = 0.0;
  for (var c = li; c < C; c += WG) { s += ldx(base + c); }
  let mean = wg_sum(s, li) / f32(C);
  var q = 0.0;
  for (var c = li; c < C; c += WG) { let d = ldx(base + c) - mean; q += d * d; }
  let rstd = inverseSqrt(wg_sum(q, li) / f32(C) + U.eps);
#ifdef MOD
  let mb = ((U.row0 + row) / U.L) * C;
  for (var c = li; c < C; c += WG) {
    let n = (ldx(base + c) - mean) * rstd * ldw(c) + ldb(c);
    out[base + c] = to_out((1.0 + scale[mb + c]) * n + shift[mb + c]);
  }
#else
  for (var c = li; c < C; c += WG) { out[base + c] = to_out((ldx(base + c) - mean) * rstd * ldw(c) + ldb(c)); }
#endif
#endif
#if OP == rms_norm
  var q = 0.0;
  for (var c = li; c < C; c += WG) { let v = ldx(base + c); q += v * v; }
  let r = inverseSqrt(wg_sum(q, li) / f32(C) + U.eps);
  for (var c = li; c < C; c += WG) { out[base + c] = to_out(ldx(base + c) * r * ldw(c)); }
#endif
#if OP == softmax
  var m = -3.402823466e38;  // lowest finite f32
  for (var c = li; c < C; c += WG) { m = max(m, ldx(base + c)); }
  let mx = wg_max(m, li);
  var s = 0.0;
  for (var c = li; c < C; c += WG) { s += exp(ldx(base + c) - mx); }
  let inv = 1.0 / wg_sum(s, li);
  for (var c = li; c < C; c += WG) { out[base + c] = to_out(exp(ldx(base + c) - mx) * inv); }
#endif
}
#endif

#ifdef EW
struct Params { n: u32, C: u32, L: u32, row0: u32, wg_x: u32 }
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if OP == modulate
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
#if OP == gated
@group(0) @binding(2) var<storage, read> gate: array<f32>;
#ifdef Y16
@group(0) @binding(3) var<storage, read> y: array<f16>;
#else
@group(0) @binding(3) var<storage, read> y: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
#if OP == swiglu
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

@compute @workgroup_size(WG)
fn ew(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * WG + li;
  if (i >= U.n) { return; }
#if OP == swiglu
  let gv = x[i];
  out[i] = gv / (1.0 + exp(-gv)) * y[i];
#else
  let c = i % U.C;
  let bc = ((U.row0 + i / U.C) / U.L) * U.C + c;
#if OP == modulate
  out[i] = (1.0 + scale[bc]) * x[i] + shift[bc];
#endif
#if OP == gated
  out[i] = x[i] + gate[bc] * f32(y[i]);
#endif
#endif
}
#endif

// GroupNorm over [B, C, H, W] f32, two-pass statistics in f32, optionally fused with SiLU.
//
// The flat tensor is a sequence of B*G groups of S = (C/G)*H*W contiguous elements. Each group is cut
// into pieces of PIECE elements (the last one shorter); a piece is the unit of work of the reduction
// passes, so the arithmetic (and the result) does not depend on how the op splits the tensor into
// bindable windows.
//
// Entries (select with ENTRY define; the op dispatches them in this order):
//   partial  (ENTRY == partial) one workgroup of 256 per piece q in [q0, q0 + nq): sums x (PASS == mean)
//            or (x - mean_g)^2 (PASS == sq) over the piece into part[q]. Fixed order: each lane sums
//            a strided subset sequentially, then a tree reduction in workgroup memory.
//            Bindings: 0 uniform; 1 x (window: global element e is x[e - base + xo]); 2 stats (PASS == sq:
//            mean of group g at stats[2g]); last: part (f32 [B*G*P]).
//            Dispatch: nq groups folded into (wg_x, y).
//   finalize (ENTRY == finalize) one invocation per group g: sums part[g*P .. g*P+P) in order;
//            PASS == mean writes stats[2g] = sum / S; PASS == sq writes stats[2g+1] = 1/sqrt(sum/S + eps).
//            Bindings: 0 uniform; 1 part; 2 stats (read_write). Dispatch: ceil(B*G / 64) groups of 64.
//   apply    (ENTRY == apply) y[e] = (x[e] - mean) * rstd [* w[c] + b[c]] [then silu], e in [e0, e0 + n).
//            Bindings: 0 uniform; 1 x (window: x[e - base + xo]); 2 stats; [3 w, 4 b (AFFINE)]; last: y
//            (window: y[e - ybase + yo]). Dispatch: ceil(n / 256) groups of 256 folded into (wg_x, y).
// Defines: ENTRY, PASS (partial/finalize), AFFINE, SILU (apply).
// Uniforms (one struct for all entries): S, P, GT (= B*G), q0, nq, base, ybase, e0, n, HW, C, Cg, wg_x, eps, xo, yo.
const PIECE: u32 = 1024u;

struct Params {
  S: u32, P: u32, GT: u32, q0: u32,
  nq: u32, base: u32, ybase: u32, e0: u32,
  n: u32, HW: u32, C: u32, Cg: u32,
  wg_x: u32, eps: f32, xo: u32, yo: u32,
}
@group(0) @binding(0) var<uniform> U: Params;

#if ENTRY == partial
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if PASS == sq
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;
#else
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
#endif
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let qi = wid.y * U.wg_x + wid.x;
  let valid = qi < U.nq;
  let q = U.q0 + min(qi, U.nq - 1u);
  let g = q / U.P;
  let p = q % U.P;
  let start = g * U.S + p * PIECE;
  let end = min(start + PIECE, g * U.S + U.S);
#if PASS == sq
  let mean = stats[2u * g];
#endif
  var s = 0.0;
  for (var e = start + li; e < end; e += 256u) {
    let v = x[e - U.base + U.xo];
#if PASS == sq
    let d = v - mean;
    s = s + d * d;
#else
    s = s + v;
#endif
  }
  red[li] = s;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (li < k) { red[li] = red[li] + red[li + k]; }
    workgroupBarrier();
  }
  if (li == 0u && valid) { part[q] = red[0]; }
}
#endif

#if ENTRY == finalize
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let g = gid.x;
  if (g >= U.GT) { return; }
  var s = 0.0;
  for (var p = 0u; p < U.P; p++) { s = s + part[g * U.P + p]; }
  let m = s / f32(U.S);
#if PASS == sq
  stats[2u * g + 1u] = 1.0 / sqrt(m + U.eps);
#else
  stats[2u * g] = m;
#endif
}
#endif

#if ENTRY == apply
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
#ifdef AFFINE
@group(0) @binding(3) var<storage, read> gw: array<f32>;
@group(0) @binding(4) var<storage, read> gb: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#else
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
  let e = U.e0 + i;
  let plane = e / U.HW;          // b*C + c
  let g = plane / U.Cg;          // b*G + c/Cg
  var v = (x[e - U.base + U.xo] - stats[2u * g]) * stats[2u * g + 1u];
#ifdef AFFINE
  let c = plane % U.C;
  v = v * gw[c] + gb[c];
#endif
#ifdef SILU
  v = v / (1.0 + exp(-v));
#endif
  y[e - U.ybase + U.yo] = v;
}
#endif

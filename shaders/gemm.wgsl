// GEMM family: out[m, n] = act(sum_k x[m, k] * W(n, k) + bias[n]), accumulated in f32 (f64 reference:
// kernels-test/ref/gemm.ts). Host side: src/ops/linear.ts (splitting, kernel choice).
//
// Bindings: 0 uniform Params (below); 1 x (f32 activations, [M, K] row-major, starting at x_off);
//   2 w (weights, starting at w_off): WLAYOUT == nk -> W(n, k) = w[n*K + k] (nn.Linear [N, K]),
//   WLAYOUT == kn -> W(n, k) = w[k*N + n] (plain matmul B [K, N]);
//   3 bias (HAS_BIAS only; f32/bf16/f16, starting at b_off); last: out (f32, element (m, n) at
//   o_off + m*ldo + n: a chunk of a split weight writes straight into its column block of the full
//   output, ldo = full N).
// Per-dispatch batch (matmul): wid.z is the batch index; x/w/out advance by xbs/wbs/obs elements.
//
// Defines:
//   WDT = f32 | bf16 | f16      weight storage type (bf16/f16 packed two per u32, widened here)
//   BDT = f32 | bf16 | f16      bias storage type (HAS_BIAS only)
//   ALIGNED                     K % 4 == 0 and all offsets multiples of 4: x and w bound as vec4 /
//                               packed-quad arrays (one load per 4 k); otherwise scalar loads
//   ACT = none | silu | gelu_tanh | gelu_erf   fused activation after the bias
//   WLAYOUT = nk | kn           see above (kn is never ALIGNED)
//   EPILOGUE                    1 when there is a bias or an activation (tiled: applied in a second loop)
//   TM, TN, WGM, WGN            entry `tiled` only: each invocation computes TM x TN outputs
//                               (rows m0 + ly*TM + i, columns n0 + lx + j*WGN so lanes store
//                               contiguously); workgroup (WGN, WGM) covers (WGM*TM) x (WGN*TN)
//
// Entries and dispatch geometry (all grids folded: group id = wid.y * wg_x + wid.x, z = batch):
//   naive  workgroup 64: one output per invocation; ceil(M*N / 64) groups. Oracle and bench baseline.
//   tiled  workgroup (WGN, WGM): register tile, no workgroup memory and no barriers (barriers are
//          costly on CPU drivers); tiles_n * ceil(M / (WGM*TM)) groups, tile id % tiles_n = column tile.
//   gemv   M <= 4 (all rows of x at once, so weights are read exactly once): workgroup 64 per 4 output
//          columns, K split over the lanes, one workgroup barrier; ceil(N / 4) groups.
#include "common/dtype.wgsl"
#include "common/math.wgsl"

struct Params {
  M: u32, N: u32, K: u32, K4: u32,
  x_off: u32, w_off: u32, b_off: u32, o_off: u32,
  ldo: u32, tiles_n: u32, wg_x: u32, _pad: u32,
  xbs: u32, wbs: u32, obs: u32, _pad2: u32,
}
@group(0) @binding(0) var<uniform> U: Params;

#ifdef ALIGNED
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
#if WDT == f32
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
#endif
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if WDT == f32
@group(0) @binding(2) var<storage, read> w: array<f32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
#endif
#endif

#ifdef HAS_BIAS
#if BDT == f32
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#else
@group(0) @binding(3) var<storage, read> bias: array<u32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

// ---- loads ----------------------------------------------------------------------------------------
// xq(base, q): x[base + 4q .. +3] where base = x_off + m*K (a multiple of 4 when ALIGNED).
// wq(base, q): W(n, 4q .. 4q+3) with base = w_off + n*K (nk layout).
#ifdef ALIGNED
fn xq(base: u32, q: u32) -> vec4<f32> { return x[(base >> 2u) + q]; }
fn wq(base: u32, q: u32) -> vec4<f32> {
#if WDT == f32
  return w[(base >> 2u) + q];
#endif
#if WDT == bf16
  let p = w[(base >> 2u) + q];
  return vec4<f32>(bitcast<f32>(p.x << 16u), bitcast<f32>(p.x & 0xffff0000u),
                   bitcast<f32>(p.y << 16u), bitcast<f32>(p.y & 0xffff0000u));
#endif
#if WDT == f16
  let p = w[(base >> 2u) + q];
  return vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y));
#endif
}
#else
fn xs(e: u32) -> f32 { return x[e]; }
fn ws(e: u32) -> f32 {
#if WDT == f32
  return w[e];
#endif
#if WDT == bf16
  return bf16_at(w[e >> 1u], e);
#endif
#if WDT == f16
  return f16_at(w[e >> 1u], e);
#endif
}
fn xq(base: u32, q: u32) -> vec4<f32> {
  let e = base + 4u * q;
  return vec4<f32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]);
}
#endif

// Element index of W(n, k) relative to the weight binding (scalar path).
fn widx(wbase: u32, n: u32, k: u32) -> u32 {
#if WLAYOUT == kn
  return wbase + k * U.N + n;
#else
  return wbase + n * U.K + k;
#endif
}

#include "common/gemm-epilogue.wgsl"

// Dot product of row m of x with column n of W over all K, scalar-general (naive and tails).
fn dot_row_col(xbase: u32, wbase: u32, n: u32, k0: u32) -> f32 {
  var s = 0.0;
#ifdef ALIGNED
  for (var q = k0 >> 2u; q < U.K4; q++) { s += dot(xq(xbase, q), wq(wbase + n * U.K, q)); }
#else
  for (var k = k0; k < U.K; k++) { s += xs(xbase + k) * ws(widx(wbase, n, k)); }
#endif
  return s;
}

@compute @workgroup_size(64)
fn naive(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 64u + li;
  if (i >= U.M * U.N) { return; }
  let m = i / U.N;
  let n = i % U.N;
  let s = dot_row_col(U.x_off + wid.z * U.xbs + m * U.K, U.w_off + wid.z * U.wbs, n, 0u);
  out[U.o_off + wid.z * U.obs + m * U.ldo + n] = finish(s, n);
}

#ifdef TM
@compute @workgroup_size(WGN, WGM)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tile = wid.y * U.wg_x + wid.x;
  let n0 = (tile % U.tiles_n) * (WGN * TN) + lid.x;
  let m0 = (tile / U.tiles_n) * (WGM * TM) + lid.y * TM;
  if (m0 >= U.M) { return; }
  let xb = U.x_off + wid.z * U.xbs;
  let wb = U.w_off + wid.z * U.wbs;
  // Out-of-range rows/columns are clamped for loads (no branches in the K loop) and skipped at store.
  var xrow: array<u32, TM>;
  for (var i = 0u; i < TM; i++) { xrow[i] = xb + min(m0 + i, U.M - 1u) * U.K; }
  var wcol: array<u32, TN>;
  for (var j = 0u; j < TN; j++) { wcol[j] = min(n0 + j * WGN, U.N - 1u); }
  var acc: array<array<f32, TN>, TM>;
#ifdef ALIGNED
  var wrow: array<u32, TN>;
  for (var j = 0u; j < TN; j++) { wrow[j] = wb + wcol[j] * U.K; }
  for (var q = 0u; q < U.K4; q++) {
    var wv: array<vec4<f32>, TN>;
    for (var j = 0u; j < TN; j++) { wv[j] = wq(wrow[j], q); }
    for (var i = 0u; i < TM; i++) {
      let xv = xq(xrow[i], q);
      for (var j = 0u; j < TN; j++) { acc[i][j] += dot(xv, wv[j]); }
    }
  }
#else
  for (var k = 0u; k < U.K; k++) {
    var wv: array<f32, TN>;
    for (var j = 0u; j < TN; j++) { wv[j] = ws(widx(wb, wcol[j], k)); }
    for (var i = 0u; i < TM; i++) {
      let xv = xs(xrow[i] + k);
      for (var j = 0u; j < TN; j++) { acc[i][j] += xv * wv[j]; }
    }
  }
#endif
  // Raw sums first (unrolled, cheap), then bias + activation over this invocation's own outputs in a
  // loop with a runtime bound that is not unrolled: finish() is compiled once instead of TM*TN times,
  // which cuts lavapipe's pipeline compile time roughly in half. Same invocation, so no barrier needed.
  let ob = U.o_off + wid.z * U.obs;
  for (var i = 0u; i < TM; i++) {
    let m = m0 + i;
    if (m >= U.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + j * WGN;
      if (n < U.N) { out[ob + m * U.ldo + n] = acc[i][j]; }
    }
  }
#if EPILOGUE == 1
  let rows = min(U.M - m0, TM);
  let cols = select(0u, (U.N - n0 + WGN - 1u) / WGN, n0 < U.N);
  let cv = min(cols, TN);
  for (var e = 0u; e < rows * cv; e++) {
    let n = n0 + (e % cv) * WGN;
    let o = ob + (m0 + e / cv) * U.ldo + n;
    out[o] = finish(out[o], n);
  }
#endif
}
#endif

// gemv: M <= 4, split-K. A workgroup of 64 handles 4 columns; lane l reduces quads q = l, l + 64, ...
// (adjacent lanes read adjacent 16-byte chunks of the same weight row: coalesced on GPUs), then one
// barrier and 16 lanes (column, row) each sum 64 partials. ceil(N / 4) groups. Measured on lavapipe
// (K = 3072, N = 3072 / 12288 bf16, M = 1): 25-30 % less CPU time than one column per invocation.
var<workgroup> sk_red: array<vec4<f32>, 256>;

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let c0 = (wid.y * U.wg_x + wid.x) * 4u;
  var xr: array<u32, 4>;
  for (var i = 0u; i < 4u; i++) { xr[i] = U.x_off + min(i, U.M - 1u) * U.K; }
  var acc: array<vec4<f32>, 4>;
  var wr: array<u32, 4>;
  for (var c = 0u; c < 4u; c++) { wr[c] = U.w_off + min(c0 + c, U.N - 1u) * U.K; }
#ifdef ALIGNED
  for (var q = li; q < U.K4; q += 64u) {
    let x0 = xq(xr[0], q);
    let x1 = xq(xr[1], q);
    let x2 = xq(xr[2], q);
    let x3 = xq(xr[3], q);
    for (var c = 0u; c < 4u; c++) {
      let wv = wq(wr[c], q);
      acc[c] += vec4<f32>(dot(x0, wv), dot(x1, wv), dot(x2, wv), dot(x3, wv));
    }
  }
#else
  for (var k = li; k < U.K; k += 64u) {
    let xv = vec4<f32>(xs(xr[0] + k), xs(xr[1] + k), xs(xr[2] + k), xs(xr[3] + k));
    for (var c = 0u; c < 4u; c++) { acc[c] += ws(wr[c] + k) * xv; }
  }
#endif
  for (var c = 0u; c < 4u; c++) { sk_red[c * 64u + li] = acc[c]; }
  workgroupBarrier();
  if (li < 16u) {
    let c = li >> 2u;
    let i = li & 3u;
    let n = c0 + c;
    if (n < U.N && i < U.M) {
      var s = 0.0;
      for (var l = 0u; l < 64u; l++) { s += sk_red[c * 64u + l][i]; }
      out[U.o_off + i * U.ldo + n] = finish(s, n);
    }
  }
}

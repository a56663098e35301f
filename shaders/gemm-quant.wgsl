// GEMM over packed sub-16-bit weights: out[m, n] = act(sum_k x[m, k] * W(n, k) + bias[n]), W dequantized
// on the fly, accumulated in f32. Host side: src/ops/linear-quant.ts; references: src/io/quant.ts
// (decoders) and kernels-test/ref/gemm.ts (the GEMM over the exactly dequantized weights).
//
// Bindings: 0 uniform Params (below); 1 x (f32 [M, K] row-major as vec4, from x_off quads);
//   2 w (u32 words, row n starting at w_off + n * row_words): FMT == fp8_e4m3 | fp8_e5m2 | q8 -> 4 codes
//   per word (byte j = k % 4), FMT == q4 -> 8 codes per word (nibble j = k % 8, code + 8);
//   3 scales (q8 / q4 only: f16 packed two per u32, scale (n, k / QBLOCK) at s_off + n * nb + k / QBLOCK);
//   then bias (HAS_BIAS only; f32 / bf16 / f16 as BDT, from b_off); last: out (f32, element (m, n) at
//   o_off + m * ldo + n, so a chunk of a split weight writes straight into its column block).
//
// Defines:
//   FMT = fp8_e4m3 | fp8_e5m2 | q8 | q4   weight format (K % 4 == 0; q8 / q4: K % QBLOCK == 0)
//   QBLOCK                                 elements per scale block along K (q8 / q4)
//   HAS_BIAS, BDT = f32 | bf16 | f16       optional bias
//   ACT = none | silu | gelu_tanh | gelu_erf
//   TM, TN, WGN                            register tile: each invocation computes TM rows x TN columns
//                                          (columns n0 + lx + j * WGN so lanes store contiguously)
//
// Entry and dispatch geometry: `tiled`, workgroup (WGN, 1); tiles_n * ceil(M / TM) groups folded into
// (wg_x, y); tile id % tiles_n = column tile. No workgroup memory, no barriers (cheap on CPU drivers).
//
// Dequantization is the one function `wquad(n, q)`: W(n, 4q .. 4q+3) = codes(n, q) * scale(n, q). Every
// code value (fp8, int8, int4) and every scale is exactly representable in f16, so a subgroup-matrix
// path can stage `wcodes` as f16 tiles and fold the per-block scale (constant over QBLOCK / 4 quads)
// into the tile or into the accumulator per K-block.
#include "common/dtype.wgsl"
#include "common/math.wgsl"

struct Params {
  M: u32, N: u32, K: u32, K4: u32,
  x_off: u32, w_off: u32, s_off: u32, b_off: u32,
  o_off: u32, ldo: u32, tiles_n: u32, wg_x: u32,
  row_words: u32, nb: u32, _pad0: u32, _pad1: u32,
}
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<u32>;

#if FMT == q8
#define BLOCKED 1
#endif
#if FMT == q4
#define BLOCKED 1
#endif

#ifdef BLOCKED
@group(0) @binding(3) var<storage, read> scales: array<u32>;
#ifdef HAS_BIAS
#if BDT == f32
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#else
@group(0) @binding(4) var<storage, read> bias: array<u32>;
#endif
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#endif
#else
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
#endif

#include "common/quant.wgsl"

#include "common/gemm-epilogue.wgsl"

@compute @workgroup_size(WGN, 1)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tile = wid.y * U.wg_x + wid.x;
  let n0 = (tile % U.tiles_n) * (WGN * TN) + lid.x;
  let m0 = (tile / U.tiles_n) * TM;
  if (m0 >= U.M) { return; }
  // Out-of-range rows / columns are clamped for loads (no branches in the K loop) and skipped at store.
  var xrow: array<u32, TM>;
  for (var i = 0u; i < TM; i++) { xrow[i] = (U.x_off >> 2u) + min(m0 + i, U.M - 1u) * U.K4; }
  var wrow: array<u32, TN>;
  var srow: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    let n = min(n0 + j * WGN, U.N - 1u);
    wrow[j] = U.w_off + n * U.row_words;
    srow[j] = U.s_off + n * U.nb;
  }
  var acc: array<array<f32, TN>, TM>;
  for (var q = 0u; q < U.K4; q++) {
    var wv: array<vec4<f32>, TN>;
    for (var j = 0u; j < TN; j++) { wv[j] = wquad(wrow[j], srow[j], q); }
    for (var i = 0u; i < TM; i++) {
      let xv = x[xrow[i] + q];
      for (var j = 0u; j < TN; j++) { acc[i][j] += dot(xv, wv[j]); }
    }
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + i;
    if (m >= U.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + j * WGN;
      if (n < U.N) { out[U.o_off + m * U.ldo + n] = finish(acc[i][j], n); }
    }
  }
}

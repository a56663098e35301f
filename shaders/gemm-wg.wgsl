// Workgroup-tiled f32 GEMM for GPUs without matrix units: out[m, n] = act(sum_k x[m, k] * W(n, k) + bias[n])
// (f64 reference: kernels-test/ref/gemm.ts; plan: src/ops/plan-gemm.ts). A BM x BN output tile per
// workgroup; x and W k-slices of BK staged in workgroup memory (each global value read once per tile,
// not once per output as in the register path); each lane accumulates TM x TN outputs in registers.
//
// Bindings: same Params and order as gemm.wgsl (0 uniform, 1 x f32 [M, K], 2 w [N, K] WDT, 3 bias if
//   HAS_BIAS, then out f32 at o_off + m*ldo + n).
// Defines: WDT, BDT, HAS_BIAS, ACT as in gemm.wgsl; BM, BN, BK tile; TM, TN per-lane register tile.
//   Workgroup (BN/TN, BM/TM) lanes; lane (lx, ly) owns rows ly + i*(BM/TM), columns lx + j*(BN/TN) so
//   neighbouring lanes read neighbouring workgroup words.
// Dispatch: tiles_n * ceil(M / BM) groups folded as (wg_x, y); tile % tiles_n = column tile.
#include "common/dtype.wgsl"
#include "common/math.wgsl"

struct Params {
  M: u32, N: u32, K: u32, K4: u32,
  x_off: u32, w_off: u32, b_off: u32, o_off: u32,
  ldo: u32, tiles_n: u32, wg_x: u32, _pad: u32,
  xbs: u32, wbs: u32, obs: u32, _pad2: u32,
}
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if WDT == f32
@group(0) @binding(2) var<storage, read> w: array<f32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
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

const LX: u32 = BN / TN;
const LY: u32 = BM / TM;
const WG: u32 = LX * LY;

var<workgroup> As: array<f32, BK * BM>;   // [BK][BM]: a k row of the x tile is contiguous
var<workgroup> Bs: array<f32, BK * BN>;   // [BK][BN]

fn w_at(e: u32) -> f32 {
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

#include "common/gemm-epilogue.wgsl"

@compute @workgroup_size(LX, LY)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let tile = wid.y * U.wg_x + wid.x;
  let n0 = (tile % U.tiles_n) * BN;
  let m0 = (tile / U.tiles_n) * BM;
  if (m0 >= U.M) { return; }   // workgroup-uniform
  var acc: array<array<f32, TN>, TM>;
  let n_kt = (U.K + BK - 1u) / BK;
  for (var kt = 0u; kt < n_kt; kt++) {
    let k0 = kt * BK;
    workgroupBarrier();
    // Staging: consecutive lanes take consecutive k of one row (coalesced global reads).
    for (var e = li; e < BM * BK; e += WG) {
      let r = e / BK;
      let kk = e % BK;
      var v = 0.0;
      if (m0 + r < U.M && k0 + kk < U.K) { v = x[U.x_off + (m0 + r) * U.K + k0 + kk]; }
      As[kk * BM + r] = v;
    }
    for (var e = li; e < BN * BK; e += WG) {
      let c = e / BK;
      let kk = e % BK;
      var v = 0.0;
      if (n0 + c < U.N && k0 + kk < U.K) { v = w_at(U.w_off + (n0 + c) * U.K + k0 + kk); }
      Bs[kk * BN + c] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var a: array<f32, TM>;
      var b: array<f32, TN>;
      for (var i = 0u; i < TM; i++) { a[i] = As[kk * BM + lid.y + i * LY]; }
      for (var j = 0u; j < TN; j++) { b[j] = Bs[kk * BN + lid.x + j * LX]; }
      for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) { acc[i][j] += a[i] * b[j]; }
      }
    }
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid.y + i * LY;
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid.x + j * LX;
      if (m < U.M && n < U.N) { out[U.o_off + m * U.ldo + n] = finish(acc[i][j], n); }
    }
  }
}

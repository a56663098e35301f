enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
// Fragment offsets depend on the subgroup id (subgroup-uniform, not workgroup-uniform), which the
// default uniformity diagnostic cannot prove; every matrix op below sits in subgroup-uniform control flow.
diagnostic(off, chromium.subgroup_matrix_uniformity);
// GEMM on subgroup matrices: out[m, n] = act(sum_k x[m, k] * W(n, k) + bias[n]), f16 operands staged in
// workgroup memory, f32 accumulation (f64 reference: kernels-test/ref/gemm.ts; plan: src/ops/plan-gemm.ts).
//
// Bindings (same Params and order as gemm.wgsl, so src/ops/linear.ts splits both alike): 0 uniform Params;
//   1 x f32 [M, K] from x_off; 2 w [N, K] (nn.Linear layout; WDT f32 or packed bf16/f16) from w_off;
//   3 bias (HAS_BIAS); then out f32 (element (m, n) at o_off + m*ldo + n); last ovf: array<atomic<u32>>,
//   word 0 counts workgroups that took the f32 recompute.
// Defines:
//   WDT, BDT, HAS_BIAS, ACT     as in gemm.wgsl
//   SM, SN, SK                  the adapter's f16→f32 config (result SM x SN, inner SK)
//   SGM, SGN                    subgroups per workgroup along M / N (a grid of SGM x SGN)
//   PM, PN                      fragments per subgroup along M / N (registers: PM*PN accumulators)
//   BK                          k-tile staged per step (multiple of SK)
//   SGSIZE                      the adapter's max subgroup size (workgroup = SGM*SGN*SGSIZE lanes)
// Tile: BM = SGM*PM*SM rows by BN = SGN*PN*SN columns per workgroup.
// Dispatch: tiles_n * ceil(M / BM) groups folded as (wg_x, y); tile % tiles_n = column tile.
// Overflow: f16 holds |v| <= 65504. A staged x or w value outside that range (or inf) sets a workgroup
//   flag; after the k loop that workgroup recomputes its whole tile in f32 straight from storage (slow,
//   rare) and bumps ovf[0], so no inf/NaN is ever produced by the narrowing. NaN inputs stay NaN.
// Subgroups: with a subgroup smaller than SGSIZE there are more subgroups than SGM*SGN; the extra ones
//   only help staging.
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
@group(0) @binding(5) var<storage, read_write> ovf: array<atomic<u32>>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> ovf: array<atomic<u32>>;
#endif

const WG: u32 = SGM * SGN * SGSIZE;
const BM: u32 = SGM * PM * SM;
const BN: u32 = SGN * PN * SN;
const BKP: u32 = BK + 8u;            // padded row: staggers rows across banks, stays a multiple of 8
const F16_MAX: f32 = 65504.0;

var<workgroup> As: array<f16, BM * BKP>;       // x tile, row-major [BM][BKP]
var<workgroup> Bs: array<f16, BN * BKP>;       // W tile, [BN][BKP] = the K x N operand in column-major
var<workgroup> Cs: array<f32, SGM * SGN * SM * SN>; // fragment scratch of each computing subgroup
var<workgroup> ovf_any: atomic<u32>;
var<workgroup> ovf_flag: u32;

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

// Narrow to f16; out-of-range values (|v| > 65504, inf) are replaced by 0 and reported.
fn narrow(v: f32, bad: ptr<function, bool>) -> f16 {
  let over = abs(v) > F16_MAX;
  *bad = *bad || over;
  return f16(select(v, 0.0, over));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_size) sg_size: u32) {
  let tile = wid.y * U.wg_x + wid.x;
  let n0 = (tile % U.tiles_n) * BN;
  let m0 = (tile / U.tiles_n) * BM;
  if (m0 >= U.M) { return; }   // workgroup-uniform
  let sg = li / sg_size;
  let sy = sg / SGN;
  let sx = sg % SGN;
  let computes = sg < SGM * SGN;
  if (li == 0u) { atomicStore(&ovf_any, 0u); }
  var bad = false;

  var acc: array<subgroup_matrix_result<f32, SN, SM>, PM * PN>;
  let n_kt = (U.K + BK - 1u) / BK;
  for (var kt = 0u; kt < n_kt; kt++) {
    let k0 = kt * BK;
    workgroupBarrier();
    for (var e = li; e < BM * BK; e += WG) {
      let r = e / BK;
      let kk = e % BK;
      let m = m0 + r;
      let k = k0 + kk;
      var v = 0.0;
      if (m < U.M && k < U.K) { v = x[U.x_off + m * U.K + k]; }
      As[r * BKP + kk] = narrow(v, &bad);
    }
    for (var e = li; e < BN * BK; e += WG) {
      let c = e / BK;
      let kk = e % BK;
      let n = n0 + c;
      let k = k0 + kk;
      var v = 0.0;
      if (n < U.N && k < U.K) { v = w_at(U.w_off + n * U.K + k); }
      Bs[c * BKP + kk] = narrow(v, &bad);
    }
    workgroupBarrier();
    if (computes) {
      for (var ks = 0u; ks < BK; ks += SK) {
        var lt: array<subgroup_matrix_left<f16, SK, SM>, PM>;
        for (var i = 0u; i < PM; i++) {
          lt[i] = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&As, ((sy * PM + i) * SM) * BKP + ks, BKP);
        }
        for (var j = 0u; j < PN; j++) {
          let rt = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, col_major>(&Bs, ((sx * PN + j) * SN) * BKP + ks, BKP);
          for (var i = 0u; i < PM; i++) {
            acc[i * PN + j] = subgroupMatrixMultiplyAccumulate(lt[i], rt, acc[i * PN + j]);
          }
        }
      }
    }
  }
  if (bad) { atomicStore(&ovf_any, 1u); }
  workgroupBarrier();
  if (li == 0u) { ovf_flag = atomicLoad(&ovf_any); }
  let overflowed = workgroupUniformLoad(&ovf_flag) != 0u;
  let ob = U.o_off;

  if (overflowed) {
    // f32 recompute of this tile (exact inputs, same accumulation type as the register path).
    if (li == 0u) { atomicAdd(&ovf[0], 1u); }
    for (var e = li; e < BM * BN; e += WG) {
      let m = m0 + e / BN;
      let n = n0 + e % BN;
      if (m < U.M && n < U.N) {
        var s = 0.0;
        for (var k = 0u; k < U.K; k++) { s += x[U.x_off + m * U.K + k] * w_at(U.w_off + n * U.K + k); }
        out[ob + m * U.ldo + n] = finish(s, n);
      }
    }
    return;
  }

  // Epilogue: each subgroup parks one fragment at a time in its scratch, its lanes add bias, apply the
  // activation and store the in-range elements.
  let cs = sg * SM * SN;
  for (var f = 0u; f < PM * PN; f++) {
    if (computes) { subgroupMatrixStore<row_major>(&Cs, cs, acc[f], SN); }
    workgroupBarrier();
    if (computes) {
      let fm0 = m0 + (sy * PM + f / PN) * SM;
      let fn0 = n0 + (sx * PN + f % PN) * SN;
      for (var e = li % sg_size; e < SM * SN; e += sg_size) {
        let m = fm0 + e / SN;
        let n = fn0 + e % SN;
        if (m < U.M && n < U.N) { out[ob + m * U.ldo + n] = finish(Cs[cs + e], n); }
      }
    }
    workgroupBarrier();
  }
}

enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
#ifdef SGCTL
enable subgroup_size_control;
#endif
// Fragment offsets depend on the subgroup id (subgroup-uniform, not workgroup-uniform), which the
// default uniformity diagnostic cannot prove; every matrix op below sits in subgroup-uniform control flow.
diagnostic(off, chromium.subgroup_matrix_uniformity);
// GEMM on subgroup matrices: out[m, n] = act(sum_k x[m, k] * W(n, k) + bias[n]), f16 operands staged in
// double-buffered workgroup tiles, f32 sums (f64 reference: kernels-test/ref/gemm.ts; plan: src/ops/plan-gemm.ts).
// Parts: common/gemm-sgmat-access.wgsl (single-element reads of x / W and stores to out),
//   common/gemm-sgmat-stage.wgsl (k-tile staging into the f16 tiles); here: bindings, tiles, the k loop, the
//   f32 recompute and the epilogue. This header documents the defines and bindings of all three.
//
// Bindings (same Params and order as gemm.wgsl, so src/ops/linear.ts splits both alike): 0 uniform Params;
//   1 x f32 (X16: f16) [M, K] from x_off; 2 w [N, K] (nn.Linear layout; WDT f32 or packed bf16/f16) from w_off, or
//   (QUANT) packed codes, row n at w_off + n*row_words; 3 (QUANT q8/q4) f16 scales, (n, k/QBLOCK) at
//   s_off + n*nb + k/QBLOCK; then bias (HAS_BIAS); then out f32 (O16: f16) (element (m, n) at o_off + m*ldo + n);
//   last ovf: array<atomic<u32>>, word 0 counts workgroups that took the f32 recompute, word 2 (O16) output
//   elements beyond the f16 range.
// Defines:
//   WDT, BDT, HAS_BIAS, ACT     as in gemm.wgsl
//   QUANT, FMT, QBLOCK, BLOCKED packed weights instead of WDT (formats and decoders: common/quant.wgsl, as in
//                               gemm-quant.wgsl): codes times block scale are narrowed into the f16 W tile
//   B_BIAS, B_OUT, B_OVF        binding numbers (they follow x, w and, for q8 / q4, the scales at 3)
//   SM, SN, SK                  the adapter's config (result SM x SN, inner SK)
//   RES = f32 | f16             the config's result type. f16 (Metal reports only f16→f16 with f16 operands):
//                               each chunk of FLUSH k-tiles is summed in f16 fragments, then added into
//                               per-lane f32 sums, so long K keeps f32-like accuracy (error ~ FLUSH*BK*2^-11)
//   SGM, SGN                    subgroups per workgroup along M / N (a grid of SGM x SGN)
//   PM, PN                      fragments per subgroup along M / N (registers: PM*PN accumulators)
//   BK                          k-tile staged per step (multiple of SK and of 8)
//   SGSIZE                      lanes per subgroup the workgroup is sized for (workgroup = SGM*SGN*SGSIZE)
//   SGCTL                       pin the subgroup size to SGSIZE (@subgroup_size; Intel's 8x16x16 configs need
//                               16, AMD's need 32); without it SGSIZE is the adapter's maximum
//   VEC                         K % 8 == 0 and x_off % 4 == w_off % 8 == 0: x and w staged with vec4 loads
//                               (bf16/f16: 8 weights per load, each packed pair unpacked once); with ADIRECT
//                               only w (x_off may be any multiple of 8, x stays bound scalar)
//   X16                         x is stored f16 (f16 activation storage, src/ops/act-dtype.ts): staged as is,
//                               read exactly by the f32 recompute
//   ADIRECT                     (X16, not CONV) A is not staged: each subgroup loads its left fragments straight
//                               from x with subgroupMatrixLoad (row-major, stride K), as ONNX Runtime's
//                               subgroup_matrix_matmul_nbits does; only W goes through workgroup memory. The
//                               host sets it only where K % max(8, SK) == 0, x_off % 8 == 0 and M >= SM:
//                               Vulkan (VUID-RuntimeSpirv-OpCooperativeMatrixLoadKHR-08986) wants the pointer
//                               and stride of a cooperative-matrix load aligned to min(16 bytes, one row of
//                               the matrix) = 16 bytes for f16 rows of SK >= 8, so every fragment row starts
//                               on a multiple of 8 elements (binding offsets are 256-byte aligned). Bounds:
//                               Dawn's robustness predicates (older) or clamps (newer) a matrix load reaching
//                               past the binding as a whole, so no load may: fragments of the last row block
//                               start at min(row, M - SM) (rows below M, in the array; the rows they repeat
//                               are masked at the store), and k-steps at or beyond K are skipped (K % SK == 0:
//                               a fragment is wholly inside or outside a row). x (ADIRECT: bound scalar) is
//                               f16 storage, in range by construction (writers clamp), so only W and (RES ==
//                               f16) the partial sums can set the overflow flag
//   O16                         out is stored f16: a value with |v| > 65504 (or inf) is stored clamped to
//                               ±65504 and counted in ovf[2]; the caller redoes the work with f32 storage
//   OVEC                        ldo, o_off and the column count are multiples of 4: vec4 output stores
//   ER                          epilogue rounds: the f32 fragment scratch holds SGM*SGN/ER fragments (ER = 2
//                               lets a 128x128x32 tile fit 48 KiB)
//   FLUSH                       (RES == f16) k-tiles per f16 chunk
//   SGMIN                       the smallest subgroup the pipeline may get (sizes the lane-owned f32 sums)
//   CONV, RESIDUAL, B_RES       implicit-GEMM conv (src/ops/conv.ts, plan src/ops/plan-conv.ts): A is gathered
//                               from the conv input and the output written NCHW / token-major with bias,
//                               residual and block accumulation (common/conv-gather.wgsl); never VEC / OVEC
//   WVEC                        (CONV; implied by VEC) vec4 weight loads: ldw, w_off and K multiples of the vector
//                               width (8 packed bf16/f16, 4 f32)
// Tile: BM = SGM*PM*SM rows by BN = SGN*PN*SN columns per workgroup. K loop: the next k-tile is staged into
//   the other buffer while the current one is multiplied: one barrier per k-tile.
// Dispatch: tiles_n * ceil(M / BM) groups folded as (wg_x, y). Tile order: groups of group_m row blocks
//   walk down M first, then along N, so workgroups in flight share weight columns (a weight larger than
//   L2 is streamed ~ceil(tiles_m / group_m) times instead of tiles_m times) and x rows.
// Overflow: f16 holds |v| <= 65504. A staged x or w value outside that range (or inf), or (RES == f16) an
//   f16 partial sum beyond it, sets a workgroup flag; after the k loop that workgroup recomputes its whole
//   tile in f32 straight from storage (slow, rare) and bumps ovf[0]. NaN inputs stay NaN.
// Subgroups: with a subgroup smaller than SGSIZE there are more subgroups than SGM*SGN; the extra ones
//   only help staging.
#include "common/dtype.wgsl"
#include "common/math.wgsl"

struct Params {
  M: u32, N: u32, K: u32, K4: u32,
  x_off: u32, w_off: u32, b_off: u32, o_off: u32,
  ldo: u32, tiles_n: u32, wg_x: u32, group_m: u32,
  s_off: u32, row_words: u32, nb: u32, _pad2: u32,
#ifdef CONV
  // implicit-GEMM conv (common/conv-gather.wgsl; same order as conv2d.wgsl's shape fields)
  H: u32, W: u32, CT: u32, Ho: u32, Wo: u32, O_all: u32, KH: u32, KW: u32,
  stride: u32, ups: u32, padT: u32, padL: u32, xs_c: u32, xs_y: u32, xs_x: u32, os_o: u32,
  os_m: u32, r_off: u32, accum: u32, fin: u32, ldw: u32, _c0: u32, _c1: u32, _c2: u32,
#endif
}
@group(0) @binding(0) var<uniform> U: Params;
#ifdef X16
#define XT f16
#else
#define XT f32
#endif
#ifdef VEC
#define WVEC 1
#ifndef ADIRECT
#define XVEC 1
#endif
#endif
#ifdef XVEC
@group(0) @binding(1) var<storage, read> x: array<vec4<XT>>;
#else
@group(0) @binding(1) var<storage, read> x: array<XT>;
#endif
#ifdef QUANT
@group(0) @binding(2) var<storage, read> w: array<u32>;
#ifdef BLOCKED
@group(0) @binding(3) var<storage, read> scales: array<u32>;
#endif
#else
#ifdef WVEC
#if WDT == f32
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
#endif
#else
#if WDT == f32
@group(0) @binding(2) var<storage, read> w: array<f32>;
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
#endif
#endif
#endif
#ifdef HAS_BIAS
#if BDT == f32
@group(0) @binding(B_BIAS) var<storage, read> bias: array<f32>;
#else
@group(0) @binding(B_BIAS) var<storage, read> bias: array<u32>;
#endif
#endif
#ifdef O16
#define OT f16
#else
#define OT f32
#endif
#ifdef OVEC
@group(0) @binding(B_OUT) var<storage, read_write> out: array<vec4<OT>>;
#else
@group(0) @binding(B_OUT) var<storage, read_write> out: array<OT>;
#endif
#ifdef RESIDUAL
@group(0) @binding(B_RES) var<storage, read> res: array<f32>;
#endif
@group(0) @binding(B_OVF) var<storage, read_write> ovf: array<atomic<u32>>;

const WG: u32 = SGM * SGN * SGSIZE;
const BM: u32 = SGM * PM * SM;
const BN: u32 = SGN * PN * SN;
const BKP: u32 = BK + 8u;            // padded row: staggers rows across banks, stays a multiple of 8
const ABUF: u32 = BM * BKP;
const BBUF: u32 = BN * BKP;
const NF: u32 = PM * PN;
const FE: u32 = (SM * SN + SGMIN - 1u) / SGMIN;   // (RES == f16) fragment elements per lane
const CSLOTS: u32 = (SGM * SGN + ER - 1u) / ER;
const F16_MAX: f32 = 65504.0;

#ifndef ADIRECT
var<workgroup> As: array<f16, 2u * ABUF>;     // x tiles, row-major [2][BM][BKP]
#endif
var<workgroup> Bs: array<f16, 2u * BBUF>;     // W tiles, [2][BN][BKP] = the K x N operand in column-major
var<workgroup> Cs: array<RES, CSLOTS * SM * SN>; // one fragment per computing subgroup (per epilogue round)
var<workgroup> ovf_any: atomic<u32>;
var<workgroup> ovf_flag: u32;

#include "common/gemm-sgmat-access.wgsl"
#include "common/gemm-sgmat-stage.wgsl"

// The first row a fragment of nominal first row r0 computes: r0, or (ADIRECT) clamped so that its SM rows
// end at row M (the load stays inside x); the epilogue stores only its rows >= r0.
fn frag_row(r0: u32) -> u32 {
#ifdef ADIRECT
  return min(r0, U.M - SM);
#else
  return r0;
#endif
}

#ifdef SGCTL
@compute @workgroup_size(WG) @subgroup_size(SGSIZE)
#else
@compute @workgroup_size(WG)
#endif
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) lane: u32) {
  // Grouped tile order (see header): tile -> (row block mt, column block nt).
  let tile = wid.y * U.wg_x + wid.x;
  let tiles_m = (U.M + BM - 1u) / BM;
  let per_group = U.group_m * U.tiles_n;
  let first_m = (tile / per_group) * U.group_m;
  if (first_m >= tiles_m) { return; }   // workgroup-uniform
  let gsize = min(tiles_m - first_m, U.group_m);
  let in_group = tile % per_group;
  let mt = first_m + in_group % gsize;
  let nt = in_group / gsize;
  if (nt >= U.tiles_n) { return; }
  let m0 = mt * BM;
  let n0 = nt * BN;
  let sg = li / sg_size;
  let sy = sg / SGN;
  let sx = sg % SGN;
  let computes = sg < SGM * SGN;
  if (li == 0u) { atomicStore(&ovf_any, 0u); }
  var bad = false;

#if RES == f16
  // Lane-owned f32 sums: element e = lane + j*sg_size of fragment f lives in accf[f * FE + j].
  var accf: array<f32, NF * FE>;
#endif
  var acc: array<subgroup_matrix_result<RES, SN, SM>, NF>;
#ifdef ADIRECT
  // Element offset in x of each left fragment's first row (row starts clamped as frag_row says).
  var arow: array<u32, PM>;
  for (var i = 0u; i < PM; i++) { arow[i] = U.x_off + frag_row(m0 + (sy * PM + i) * SM) * U.K; }
#endif
  let n_kt = (U.K + BK - 1u) / BK;
  stage(0u, m0, n0, 0u, li, &bad);
  workgroupBarrier();
  for (var kt = 0u; kt < n_kt; kt++) {
    let cur = kt & 1u;
    // The other buffer was last read in step kt-1, which ended with a barrier.
    if (kt + 1u < n_kt) { stage(cur ^ 1u, m0, n0, (kt + 1u) * BK, li, &bad); }
    if (computes) {
      let bb = cur * BBUF;
#ifdef ADIRECT
      let k0 = kt * BK;
#else
      let ab = cur * ABUF;
#endif
      for (var ks = 0u; ks < BK; ks += SK) {
        var lt: array<subgroup_matrix_left<f16, SK, SM>, PM>;
#ifdef ADIRECT
        // K tail: a fragment at or beyond K would read the next row, or past the binding (workgroup-uniform).
        if (k0 + ks >= U.K) { break; }
        for (var i = 0u; i < PM; i++) {
          lt[i] = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&x, arow[i] + k0 + ks, U.K);
        }
#else
        for (var i = 0u; i < PM; i++) {
          lt[i] = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&As, ab + ((sy * PM + i) * SM) * BKP + ks, BKP);
        }
#endif
        for (var j = 0u; j < PN; j++) {
          let rt = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, col_major>(&Bs, bb + ((sx * PN + j) * SN) * BKP + ks, BKP);
          for (var i = 0u; i < PM; i++) {
            acc[i * PN + j] = subgroupMatrixMultiplyAccumulate(lt[i], rt, acc[i * PN + j]);
          }
        }
      }
    }
#if RES == f16
    if ((kt + 1u) % FLUSH == 0u || kt + 1u == n_kt) {
      // Add this chunk's f16 partial sums into the lane-owned f32 sums (Cs slot per computing subgroup;
      // ER == 1 for f16 results, the plan sees to it).
      for (var f = 0u; f < NF; f++) {
        if (computes) { subgroupMatrixStore<row_major>(&Cs, sg * SM * SN, acc[f], SN); }
        workgroupBarrier();
        if (computes) {
          for (var j = 0u; j < FE; j++) {
            let e = lane + j * sg_size;
            if (e < SM * SN) {
              let p = f32(Cs[sg * SM * SN + e]);
              bad = bad || abs(p) > F16_MAX;
              accf[f * FE + j] += p;
            }
          }
          acc[f] = subgroup_matrix_result<f16, SN, SM>();
        }
        workgroupBarrier();
      }
    }
#endif
    workgroupBarrier();
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
        for (var k = 0u; k < U.K; k++) { s += a_val(m, k) * wval(n, k); }
        put(m, n, s);
      }
    }
    return;
  }

#if RES == f16
  // Lanes store the elements they own (no scratch round trip).
  if (computes) {
    for (var f = 0u; f < NF; f++) {
      let fm0 = m0 + (sy * PM + f / PN) * SM;
      let fa = frag_row(fm0);
      let fn0 = n0 + (sx * PN + f % PN) * SN;
      for (var j = 0u; j < FE; j++) {
        let e = lane + j * sg_size;
        let m = fa + e / SN;
        let n = fn0 + e % SN;
        if (e < SM * SN && m >= fm0 && m < U.M && n < U.N) { put(m, n, accf[f * FE + j]); }
      }
    }
  }
#else
  // Epilogue: per round, each subgroup of that round parks one fragment at a time in its scratch slot;
  // its lanes add bias and the activation to four consecutive columns and store them as one vec4.
  let slot = (sg / ER) * SM * SN;
  for (var f = 0u; f < NF; f++) {
    for (var round = 0u; round < ER; round++) {
      let mine = computes && sg % ER == round;
      if (mine) { subgroupMatrixStore<row_major>(&Cs, slot, acc[f], SN); }
      workgroupBarrier();
      if (mine) {
        let fm0 = m0 + (sy * PM + f / PN) * SM;
        let fn0 = n0 + (sx * PN + f % PN) * SN;
#ifdef CONV
        // NCHW output: neighbouring lanes store neighbouring pixels of one channel.
        for (var e = lane; e < SM * SN; e += sg_size) {
          let m = fm0 + e % SM;
          let n = fn0 + e / SM;
          if (m < U.M && n < U.N) { put(m, n, Cs[slot + (e % SM) * SN + e / SM]); }
        }
#else
        let fa = frag_row(fm0);
        for (var e = lane * 4u; e < SM * SN; e += sg_size * 4u) {
          let m = fa + e / SN;
          let n = fn0 + e % SN;
          if (m >= fm0 && m < U.M) {
            let o = ob + m * U.ldo + n;
            let c = slot + e;
#ifdef OVEC
            if (n + 3u < U.N) {
              out[o >> 2u] = vec4<OT>(to_out(finish(Cs[c], n)), to_out(finish(Cs[c + 1u], n + 1u)), to_out(finish(Cs[c + 2u], n + 2u)), to_out(finish(Cs[c + 3u], n + 3u)));
              continue;
            }
#endif
            for (var i = 0u; i < 4u; i++) {
              if (n + i < U.N) { put(m, n + i, Cs[c + i]); }
            }
          }
        }
#endif
      }
      workgroupBarrier();
    }
  }
#endif
}

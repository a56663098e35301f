enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
#ifdef SGCTL
enable subgroup_size_control;
#endif
// Fragment offsets depend on the subgroup id (subgroup-uniform, not workgroup-uniform); every matrix op
// sits in subgroup-uniform control flow.
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);
// Flash attention on subgroup matrices (f64 reference: kernels-test/ref/attention.ts; plan:
// src/ops/plan-attention.ts). Token-major f32 tensors: q/out [B, LQ, H, DH], k/v [B, LK, HKV, DH];
//   out[b,i,h,:] = sum_j softmax_j(scale q[b,i,h].k[b,j,hk]) v[b,j,hk], hk = h / (H / HKV).
// S = Q K^T and O += P V run on the matrix units with f16 operands and f32 accumulation. Q (left
// fragments) and O (f32 result fragments) stay in each subgroup's registers across all KV tiles, so the
// workgroup memory holds only the f16 K/V tile and the score tile: 64-128 query rows fit 48 KiB.
// Online softmax with a lazy rescale: a row keeps its reference max m until a tile's max exceeds it by
// more than TAU (log2 units), so P = exp2(s - m) <= 2^TAU (exact in f16's range) and O needs rescaling
// only on those rare tiles (through workgroup memory, one fragment at a time, workgroup-uniform).
//
// Bindings: 0 uniform Params; 1 q; 2 k; 3 v (array<vec4<f32>> with VEC4, else array<f32>; QKV16: f16,
//   f16 activation storage, src/ops/act-dtype.ts); 4 out (O16: f16, a convex combination of v, so in range);
//   5 ovf (array<atomic<u32>>, word 1 counts workgroups recomputed in f32, word 3 KV tiles that
//   rescaled O); then when defined, numbered by
//   the host: keymask [B, LK] f32 (B_KEYMASK), mask [B, LQ, LK] f32 (B_MASK), seg [LQ] i32 (B_SEG),
//   qmask [B, LQ] f32 (B_QMASK).
// Defines: SM, SN, SK the f16→f32 matrix config; NSG subgroups of SGSIZE lanes (workgroup NSG*SGSIZE;
//   SGCTL pins the subgroup size); BQ = NSG*SM query rows per workgroup (subgroup s owns rows s*SM..);
//   BKV keys per tile (multiple of SN and SK); DH head dim, DHP = DH rounded up to a multiple of SK and
//   SN (zero padded); VEC4 when DH % 4 == 0 (vec4 loads of q/k/v); LPR lanes per softmax row (each
//   takes every LPR-th key); SGREDUCE: the row max is reduced across those lanes with subgroup shuffles
//   (they must share a subgroup), otherwise through workgroup memory (one more barrier per tile; the
//   variant for drivers that crash on cooperative-matrix and subgroup ops in one module, NVIDIA 595.58);
//   flags KEYMASK, MASK, SEG, QMASK.
// Workgroup memory (bytes): KV f16 max(BQ, 2 BKV) DHP 2 (Q is staged there once), Ss f32 BQ BKV 4 (also
//   the rescale / output scratch, BQ SN f32), Ps f16 BQ BKV 2, Mp/Lp/Red f32 3 BQ LPR 4, Al f32 BQ 4, 16.
// Dispatch: ceil(LQ/BQ) * H * B workgroups (linear id = wid.y*wg_x + wid.x) → (query tile, head, batch).
// Barriers per KV tile: 4 (SGREDUCE) or 5, plus 2 per O fragment on a rescale tile.
// Masks: invisible scores are NEG (finite, so no inf - inf); a row with no visible key writes 0.
//   Causal: key j visible to query i iff j <= i + LK - LQ.
// Overflow: a staged q/k/v value beyond 65504 sets a workgroup flag; such a workgroup recomputes its rows
//   with a scalar f32 online softmax straight from storage (rare, slow), so narrowing never makes inf/NaN.
struct Params {
  lq: u32, lk: u32, h: u32, hkv: u32,
  n_qt: u32, wg_x: u32, nb: u32, causal: u32,
  scale_log2: f32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> U: Params;
#ifdef QKV16
#define IT f16
#else
#define IT f32
#endif
#ifdef O16
#define OT f16
#else
#define OT f32
#endif
#ifdef VEC4
@group(0) @binding(1) var<storage, read> q: array<vec4<IT>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<IT>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<IT>>;
fn ldq(i: u32) -> f32 { return f32(q[i >> 2u][i & 3u]); }
fn ldk(i: u32) -> f32 { return f32(k[i >> 2u][i & 3u]); }
fn ldv(i: u32) -> f32 { return f32(v[i >> 2u][i & 3u]); }
fn ldq4(i: u32, n: u32) -> vec4<f32> { return vec4<f32>(q[i >> 2u]); }
fn ldk4(i: u32, n: u32) -> vec4<f32> { return vec4<f32>(k[i >> 2u]); }
fn ldv4(i: u32, n: u32) -> vec4<f32> { return vec4<f32>(v[i >> 2u]); }
#else
@group(0) @binding(1) var<storage, read> q: array<IT>;
@group(0) @binding(2) var<storage, read> k: array<IT>;
@group(0) @binding(3) var<storage, read> v: array<IT>;
fn ldq(i: u32) -> f32 { return f32(q[i]); }
fn ldk(i: u32) -> f32 { return f32(k[i]); }
fn ldv(i: u32) -> f32 { return f32(v[i]); }
// n of the 4 elements lie inside the row (DH % 4 != 0).
fn ldq4(i: u32, n: u32) -> vec4<f32> { var r = vec4<f32>(0.0); for (var c = 0u; c < n; c++) { r[c] = f32(q[i + c]); } return r; }
fn ldk4(i: u32, n: u32) -> vec4<f32> { var r = vec4<f32>(0.0); for (var c = 0u; c < n; c++) { r[c] = f32(k[i + c]); } return r; }
fn ldv4(i: u32, n: u32) -> vec4<f32> { var r = vec4<f32>(0.0); for (var c = 0u; c < n; c++) { r[c] = f32(v[i + c]); } return r; }
#endif
@group(0) @binding(4) var<storage, read_write> o: array<OT>;
@group(0) @binding(5) var<storage, read_write> ovf: array<atomic<u32>>;
#ifdef KEYMASK
@group(0) @binding(B_KEYMASK) var<storage, read> keymask: array<f32>;
#endif
#ifdef MASK
@group(0) @binding(B_MASK) var<storage, read> mask: array<f32>;
#endif
#ifdef SEG
@group(0) @binding(B_SEG) var<storage, read> seg: array<i32>;
#endif
#ifdef QMASK
@group(0) @binding(B_QMASK) var<storage, read> qmask: array<f32>;
#endif

const WG: u32 = NSG * SGSIZE;
const BQ: u32 = NSG * SM;
const RSTEP: u32 = WG / LPR;   // rows handled at once by the softmax loops
const NEG: f32 = -3.0e38;
const F16_MAX: f32 = 65504.0;
const TAU: f32 = 8.0;
const KVN: u32 = max(BQ, 2u * BKV) * DHP;
const NQF: u32 = DHP / SK;     // Q fragments per subgroup
const NOF: u32 = DHP / SN;     // O fragments per subgroup

var<workgroup> KV: array<f16, KVN>;      // Q staging at the start, then K at 0 and V at BKV*DHP
var<workgroup> Ss: array<f32, BQ * BKV>;
var<workgroup> Ps: array<f16, BQ * BKV>;
var<workgroup> Mp: array<f32, BQ * LPR>;   // reference max per (row, lane), log2 units; equal across a row
var<workgroup> Lp: array<f32, BQ * LPR>;   // partial sums per (row, lane)
var<workgroup> Red: array<f32, BQ * LPR>;  // this tile's partial maxima
var<workgroup> Al: array<f32, BQ>;         // this tile's rescale factor (1 when none)
var<workgroup> resc: atomic<u32>;          // rows rescaled so far (monotonic)
var<workgroup> resc_seen: u32;
var<workgroup> ovf_any: atomic<u32>;
var<workgroup> ovf_flag: u32;

fn visible(b: u32, i: u32, j: u32) -> bool {
  if (i >= U.lq || j >= U.lk) { return false; }
  if (U.causal != 0u && j + U.lq > i + U.lk) { return false; }
#ifdef KEYMASK
  if (keymask[b * U.lk + j] == 0.0) { return false; }
#endif
#ifdef MASK
  if (mask[(b * U.lq + i) * U.lk + j] == 0.0) { return false; }
#endif
#ifdef SEG
  if (seg[i] != seg[j]) { return false; }
#endif
  return true;
}

fn narrow4(val: vec4<f32>, bad: ptr<function, bool>) -> vec4<f16> {
  let over = abs(val) > vec4<f32>(F16_MAX);
  *bad = *bad || any(over);
  return vec4<f16>(select(val, vec4<f32>(0.0), over));
}

fn put4(off: u32, x: vec4<f16>) {
  KV[off] = x.x; KV[off + 1u] = x.y; KV[off + 2u] = x.z; KV[off + 3u] = x.w;
}

// Scratch row r (of BQ), column c (of SN) of one O fragment per subgroup.
fn scr(r: u32, c: u32) -> u32 { return r * SN + c; }

#ifdef SGCTL
@compute @workgroup_size(WG) @subgroup_size(SGSIZE)
#else
@compute @workgroup_size(WG)
#endif
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_size) sg_size: u32) {
  let gid = wid.y * U.wg_x + wid.x;
  let qt = gid % U.n_qt;
  let hb = gid / U.n_qt;
  let h = hb % U.h;
  let b = hb / U.h;
  if (b >= U.nb) { return; }   // workgroup-uniform
  let hk = h / (U.h / U.hkv);
  let q_rs = U.h * DH;
  let k_rs = U.hkv * DH;
  let q_base = (b * U.lq * U.h + h) * DH;
  let k_base = (b * U.lk * U.hkv + hk) * DH;
  let i0 = qt * BQ;
  let sg = li / sg_size;
  let computes = sg < NSG;
  let part = li % LPR;
  var bad = false;
  if (li == 0u) { atomicStore(&ovf_any, 0u); atomicStore(&resc, 0u); }

  for (var e = li; e < BQ * DHP / 4u; e += WG) {
    let r = e / (DHP / 4u);
    let d = (e % (DHP / 4u)) * 4u;
    var val = vec4<f32>(0.0);
    if (i0 + r < U.lq && d < DH) { val = ldq4(q_base + (i0 + r) * q_rs + d, min(4u, DH - d)); }
    put4(r * DHP + d, narrow4(val, &bad));
  }
  for (var e = li; e < BQ * LPR; e += WG) { Mp[e] = NEG; Lp[e] = 0.0; }
  workgroupBarrier();
  var qf: array<subgroup_matrix_left<f16, SK, SM>, NQF>;
  var ofr: array<subgroup_matrix_result<f32, SN, SM>, NOF>;
  if (computes) {
    for (var d = 0u; d < NQF; d++) {
      qf[d] = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&KV, sg * SM * DHP + d * SK, DHP);
    }
  }
  var seen = 0u;

  // Causal: no key past the last row's diagonal is visible.
  var k_end = U.lk;
  if (U.causal != 0u) {
    let last = min(i0 + BQ, U.lq) + U.lk;   // keys j < last - lq are visible to some row
    k_end = select(0u, min(last - U.lq, U.lk), last > U.lq);
  }
  let n_kt = (k_end + BKV - 1u) / BKV;
  for (var kt = 0u; kt < n_kt; kt++) {
    let j0 = kt * BKV;
    workgroupBarrier();   // the previous tile's P V (and the Q loads) are done with KV and Ps
    for (var e = li; e < BKV * DHP / 4u; e += WG) {
      let jj = e / (DHP / 4u);
      let d = (e % (DHP / 4u)) * 4u;
      var kv = vec4<f32>(0.0);
      var vv = vec4<f32>(0.0);
      if (j0 + jj < U.lk && d < DH) {
        let at = k_base + (j0 + jj) * k_rs + d;
        let n = min(4u, DH - d);
        kv = ldk4(at, n);
        vv = ldv4(at, n);
      }
      put4(jj * DHP + d, narrow4(kv, &bad));
      put4(BKV * DHP + jj * DHP + d, narrow4(vv, &bad));
    }
    workgroupBarrier();
    // S[rows of subgroup sg, all BKV keys] = Q K^T (K^T is the K tile read column-major).
    if (computes) {
      for (var f = 0u; f < BKV / SN; f++) {
        var acc = subgroup_matrix_result<f32, SN, SM>();
        for (var d = 0u; d < NQF; d++) {
          let r = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, col_major>(&KV, f * SN * DHP + d * SK, DHP);
          acc = subgroupMatrixMultiplyAccumulate(qf[d], r, acc);
        }
        subgroupMatrixStore<row_major>(&Ss, sg * SM * BKV + f * SN, acc, BKV);
      }
    }
    workgroupBarrier();
    // Online softmax: LPR lanes per row, lane `part` takes keys part, part + LPR, ...
    for (var r = li / LPR; r < BQ; r += RSTEP) {
      let i = i0 + r;
      var tmax = NEG;
      for (var jj = part; jj < BKV; jj += LPR) {
        let s = select(NEG, Ss[r * BKV + jj] * U.scale_log2, visible(b, i, j0 + jj));
        Ss[r * BKV + jj] = s;
        tmax = max(tmax, s);
      }
#ifdef SGREDUCE
      for (var m = 1u; m < LPR; m <<= 1u) { tmax = max(tmax, subgroupShuffleXor(tmax, m)); }
#endif
      Red[r * LPR + part] = tmax;
    }
#ifndef SGREDUCE
    workgroupBarrier();
#endif
    for (var r = li / LPR; r < BQ; r += RSTEP) {
#ifdef SGREDUCE
      let tmax = Red[r * LPR + part];   // already the row's max (written by this lane)
#else
      var tmax = NEG;
      for (var p = 0u; p < LPR; p++) { tmax = max(tmax, Red[r * LPR + p]); }
#endif
      let m_old = Mp[r * LPR + part];
      var m = m_old;
      var alpha = 1.0;
      if (tmax > m_old + TAU) {
        m = tmax;
        if (m_old > NEG) {   // the row has accumulated keys: rescale its O and sums
          alpha = exp2(m_old - m);
          if (part == 0u) { atomicAdd(&resc, 1u); }
        }
      }
      var psum = 0.0;
      for (var jj = part; jj < BKV; jj += LPR) {
        let s = Ss[r * BKV + jj];
        let p = select(0.0, exp2(s - m), s > NEG);
        Ps[r * BKV + jj] = f16(p);
        psum += p;
      }
      Mp[r * LPR + part] = m;
      Lp[r * LPR + part] = Lp[r * LPR + part] * alpha + psum;
      if (part == 0u) { Al[r] = alpha; }
    }
    workgroupBarrier();
    if (li == 0u) { resc_seen = atomicLoad(&resc); }
    let now = workgroupUniformLoad(&resc_seen);
    if (now != seen) {
      seen = now;
      if (li == 0u) { atomicAdd(&ovf[3], 1u); }
      for (var f = 0u; f < NOF; f++) {
        if (computes) { subgroupMatrixStore<row_major>(&Ss, sg * SM * SN, ofr[f], SN); }
        workgroupBarrier();
        for (var e = li; e < BQ * SN; e += WG) { Ss[e] *= Al[e / SN]; }
        workgroupBarrier();
        if (computes) { ofr[f] = subgroupMatrixLoad<subgroup_matrix_result<f32, SN, SM>, row_major>(&Ss, sg * SM * SN, SN); }
      }
    }
    // O[rows of sg] += P V.
    if (computes) {
      for (var f = 0u; f < NOF; f++) {
        for (var j = 0u; j < BKV; j += SK) {
          let l = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&Ps, sg * SM * BKV + j, BKV);
          let r = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, row_major>(&KV, BKV * DHP + j * DHP + f * SN, DHP);
          ofr[f] = subgroupMatrixMultiplyAccumulate(l, r, ofr[f]);
        }
      }
    }
  }
  if (bad) { atomicStore(&ovf_any, 1u); }
  workgroupBarrier();
  if (li == 0u) { ovf_flag = atomicLoad(&ovf_any); }
  let overflowed = workgroupUniformLoad(&ovf_flag) != 0u;
  if (overflowed) {
    // Scalar f32 online softmax, one lane per row, straight from storage.
    if (li == 0u) { atomicAdd(&ovf[1], 1u); }
    for (var r = li; r < BQ; r += WG) {
      let i = i0 + r;
      if (i >= U.lq) { continue; }
      var acc: array<f32, DH>;
      var m = NEG;
      var l = 0.0;
      for (var j = 0u; j < U.lk; j++) {
        if (!visible(b, i, j)) { continue; }
        var s = 0.0;
        for (var d = 0u; d < DH; d++) { s += ldq(q_base + i * q_rs + d) * ldk(k_base + j * k_rs + d); }
        s *= U.scale_log2;
        let m_new = max(m, s);
        let alpha = exp2(m - m_new);
        let p = exp2(s - m_new);
        l = l * alpha + p;
        for (var d = 0u; d < DH; d++) { acc[d] = acc[d] * alpha + p * ldv(k_base + j * k_rs + d); }
        m = m_new;
      }
      var keep = l > 0.0;
#ifdef QMASK
      keep = keep && qmask[b * U.lq + i] != 0.0;
#endif
      for (var d = 0u; d < DH; d++) { o[q_base + i * q_rs + d] = OT(select(0.0, acc[d] / l, keep)); }
    }
    return;
  }
  // Output, one O fragment at a time through the scratch: divide by the row sum, drop padding.
  for (var f = 0u; f < NOF; f++) {
    workgroupBarrier();
    if (computes) { subgroupMatrixStore<row_major>(&Ss, sg * SM * SN, ofr[f], SN); }
    workgroupBarrier();
    for (var e = li; e < BQ * SN; e += WG) {
      let r = e / SN;
      let d = f * SN + e % SN;
      let i = i0 + r;
      if (i >= U.lq || d >= DH) { continue; }
      var l = 0.0;
      for (var p = 0u; p < LPR; p++) { l += Lp[r * LPR + p]; }
      var keep = l > 0.0;
#ifdef QMASK
      keep = keep && qmask[b * U.lq + i] != 0.0;
#endif
      o[q_base + i * q_rs + d] = OT(select(0.0, Ss[e] / l, keep));
    }
  }
}

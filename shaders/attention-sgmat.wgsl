enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
// Fragment offsets depend on the subgroup id (subgroup-uniform, not workgroup-uniform); every matrix op
// sits in subgroup-uniform control flow.
diagnostic(off, chromium.subgroup_matrix_uniformity);
// Flash attention on subgroup matrices (f64 reference: kernels-test/ref/attention.ts; plan:
// src/ops/plan-attention.ts). Token-major f32 tensors: q/out [B, LQ, H, DH], k/v [B, LK, HKV, DH];
//   out[b,i,h,:] = sum_j softmax_j(scale q[b,i,h].k[b,j,hk]) v[b,j,hk], hk = h / (H / HKV).
// S = Q K^T and O += P V run on the matrix units with f16 operands and f32 accumulation; the online
// softmax (running max m, sum l, rescale alpha) is f32 in workgroup memory.
//
// Bindings: 0 uniform Params; 1 q; 2 k; 3 v; 4 out; 5 ovf (array<atomic<u32>>, word 1 counts
//   workgroups recomputed in f32); then when defined, numbered by the host: keymask [B, LK] f32
//   (B_KEYMASK), mask [B, LQ, LK] f32 (B_MASK), seg [LQ] i32 (B_SEG), qmask [B, LQ] f32 (B_QMASK).
// Defines: SM, SN, SK the f16→f32 matrix config; NSG subgroups of SGSIZE lanes (workgroup NSG*SGSIZE);
//   BQ = NSG*SM query rows per workgroup (subgroup s owns rows s*SM..); BKV keys per tile (multiple of SN
//   and SK); DH head dim, DHP = DH rounded up to a multiple of SK and SN (zero padded);
//   flags KEYMASK, MASK, SEG, QMASK.
// Workgroup memory (bytes): Qs/Ks/Vs f16 (BQ + 2 BKV) DHP 2, Ss f32 BQ BKV 4, Ps f16 BQ BKV 2,
//   Os f32 BQ DHP 4, three f32 row vectors; the plan keeps it under the device limit.
// Dispatch: ceil(LQ/BQ) * H * B workgroups (linear id = wid.y*wg_x + wid.x) → (query tile, head, batch).
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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
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
const NEG: f32 = -3.0e38;
const F16_MAX: f32 = 65504.0;

var<workgroup> Qs: array<f16, BQ * DHP>;
var<workgroup> Ks: array<f16, BKV * DHP>;
var<workgroup> Vs: array<f16, BKV * DHP>;
var<workgroup> Ss: array<f32, BQ * BKV>;
var<workgroup> Ps: array<f16, BQ * BKV>;
var<workgroup> Os: array<f32, BQ * DHP>;
var<workgroup> Mr: array<f32, BQ>;   // running max (log2 units)
var<workgroup> Lr: array<f32, BQ>;   // running sum
var<workgroup> Al: array<f32, BQ>;   // this tile's rescale factor
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

fn narrow(val: f32, bad: ptr<function, bool>) -> f16 {
  let over = abs(val) > F16_MAX;
  *bad = *bad || over;
  return f16(select(val, 0.0, over));
}

@compute @workgroup_size(WG)
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
  var bad = false;
  if (li == 0u) { atomicStore(&ovf_any, 0u); }

  for (var e = li; e < BQ * DHP; e += WG) {
    let r = e / DHP;
    let d = e % DHP;
    var val = 0.0;
    if (i0 + r < U.lq && d < DH) { val = q[q_base + (i0 + r) * q_rs + d]; }
    Qs[e] = narrow(val, &bad);
    Os[e] = 0.0;
  }
  for (var r = li; r < BQ; r += WG) { Mr[r] = NEG; Lr[r] = 0.0; }

  // Causal: no key past the last row's diagonal is visible.
  var k_end = U.lk;
  if (U.causal != 0u) {
    let last = min(i0 + BQ, U.lq) + U.lk;   // keys j < last - lq are visible to some row
    k_end = select(0u, min(last - U.lq, U.lk), last > U.lq);
  }
  let n_kt = (k_end + BKV - 1u) / BKV;
  for (var kt = 0u; kt < n_kt; kt++) {
    let j0 = kt * BKV;
    workgroupBarrier();
    for (var e = li; e < BKV * DHP; e += WG) {
      let jj = e / DHP;
      let d = e % DHP;
      var kv = 0.0;
      var vv = 0.0;
      if (j0 + jj < U.lk && d < DH) {
        kv = k[k_base + (j0 + jj) * k_rs + d];
        vv = v[k_base + (j0 + jj) * k_rs + d];
      }
      Ks[e] = narrow(kv, &bad);
      Vs[e] = narrow(vv, &bad);
    }
    workgroupBarrier();
    // S[rows of subgroup sg, all BKV keys] = Q K^T (K^T is Ks read column-major).
    if (computes) {
      for (var f = 0u; f < BKV / SN; f++) {
        var acc = subgroup_matrix_result<f32, SN, SM>();
        for (var d0 = 0u; d0 < DHP; d0 += SK) {
          let l = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&Qs, sg * SM * DHP + d0, DHP);
          let r = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, col_major>(&Ks, f * SN * DHP + d0, DHP);
          acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
        }
        subgroupMatrixStore<row_major>(&Ss, sg * SM * BKV + f * SN, acc, BKV);
      }
    }
    workgroupBarrier();
    // Online softmax, one lane per row (f32).
    for (var r = li; r < BQ; r += WG) {
      let i = i0 + r;
      var tmax = NEG;
      for (var jj = 0u; jj < BKV; jj++) {
        let s = select(NEG, Ss[r * BKV + jj] * U.scale_log2, visible(b, i, j0 + jj));
        Ss[r * BKV + jj] = s;
        tmax = max(tmax, s);
      }
      let m_old = Mr[r];
      let m_new = max(m_old, tmax);
      var psum = 0.0;
      for (var jj = 0u; jj < BKV; jj++) {
        let s = Ss[r * BKV + jj];
        let p = select(0.0, exp2(s - m_new), s > NEG);
        Ps[r * BKV + jj] = f16(p);
        psum += p;
      }
      let alpha = exp2(m_old - m_new);
      Mr[r] = m_new;
      Lr[r] = Lr[r] * alpha + psum;
      Al[r] = alpha;
    }
    workgroupBarrier();
    for (var e = li; e < BQ * DHP; e += WG) { Os[e] *= Al[e / DHP]; }
    workgroupBarrier();
    // O[rows of sg] += P V.
    if (computes) {
      for (var f = 0u; f < DHP / SN; f++) {
        let off = sg * SM * DHP + f * SN;
        var acc = subgroupMatrixLoad<subgroup_matrix_result<f32, SN, SM>, row_major>(&Os, off, DHP);
        for (var j = 0u; j < BKV; j += SK) {
          let l = subgroupMatrixLoad<subgroup_matrix_left<f16, SK, SM>, row_major>(&Ps, sg * SM * BKV + j, BKV);
          let r = subgroupMatrixLoad<subgroup_matrix_right<f16, SN, SK>, row_major>(&Vs, j * DHP + f * SN, DHP);
          acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
        }
        subgroupMatrixStore<row_major>(&Os, off, acc, DHP);
      }
    }
  }
  if (bad) { atomicStore(&ovf_any, 1u); }
  workgroupBarrier();
  if (li == 0u) { ovf_flag = atomicLoad(&ovf_any); }
  let overflowed = workgroupUniformLoad(&ovf_flag) != 0u;
  if (overflowed) {
    // Scalar f32 online softmax per row, accumulating in Os (rows are private to their lane here).
    if (li == 0u) { atomicAdd(&ovf[1], 1u); }
    for (var r = li; r < BQ; r += WG) {
      let i = i0 + r;
      if (i >= U.lq) { continue; }
      var m = NEG;
      var l = 0.0;
      for (var d = 0u; d < DH; d++) { Os[r * DHP + d] = 0.0; }
      for (var j = 0u; j < U.lk; j++) {
        if (!visible(b, i, j)) { continue; }
        var s = 0.0;
        for (var d = 0u; d < DH; d++) { s += q[q_base + i * q_rs + d] * k[k_base + j * k_rs + d]; }
        s *= U.scale_log2;
        let m_new = max(m, s);
        let alpha = exp2(m - m_new);
        let p = exp2(s - m_new);
        l = l * alpha + p;
        for (var d = 0u; d < DH; d++) { Os[r * DHP + d] = Os[r * DHP + d] * alpha + p * v[k_base + j * k_rs + d]; }
        m = m_new;
      }
      Lr[r] = l;
    }
  }
  workgroupBarrier();
  for (var e = li; e < BQ * DH; e += WG) {
    let r = e / DH;
    let d = e % DH;
    let i = i0 + r;
    if (i >= U.lq) { continue; }
    let l = Lr[r];
    var keep = l > 0.0;
#ifdef QMASK
    keep = keep && qmask[b * U.lq + i] != 0.0;
#endif
    o[q_base + i * q_rs + d] = select(0.0, Os[r * DHP + d] / l, keep);
  }
}

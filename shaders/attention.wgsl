// Flash-style attention (online softmax; no Lq×Lk buffer), token-major f32.
//   q/out [NB, LQ, H, DH], k/v [NB, LK, HKV, DH]  (one chunk of the caller's tensors; see src/ops/attention.ts)
//   out[b,i,h,:] = Σ_j softmax_j(scale · q[b,i,h]·k[b,j,hk]) v[b,j,hk],  hk = h / (H / HKV)  (GQA)
//
// Bindings: 0 uniform Params; 1 q; 2 k; 3 v; 4 out (read_write: holds the running, unnormalised
//   accumulator between key chunks when STATE); then, in this order when defined:
//   ml [NB, LQ, H, 2] (STATE: running max (log2 units) and sum), keymask [B, LK_FULL] f32,
//   mask [NB, LQ, LK_FULL] f32, seg [LQ_FULL] i32, qmask [B, LQ_FULL] f32. Their binding numbers come in
//   as defines B_ML, B_KEYMASK, B_MASK, B_SEG, B_QMASK (the TS wrapper numbers them consecutively).
// Defines (structure): DH head dim; BQ query rows per workgroup; TPR threads per query row
//   (workgroup = BQ*TPR); BK keys per tile; DC head-dim chunk of the q·k phase, done NCH = 1, 2 or 4
//   times (flags QK2, QK4); VK keys per V sub-tile, BK/VK = 1 or 2 sub-tiles (flag PV2); SH floats of the
//   shared union (max(BQ*DC + BK*(DC+1), VK*DHP)); flags STATE, KEYMASK, MASK, SEG, QMASK, SKIP (skip key
//   tiles where no (row, key) pair is visible: a cheap mask test before the dots).
// Compile-time notes (lavapipe/llvmpipe, measured): a barrier inside a loop it does not unroll costs
//   5–30 s of CPU to compile, so the chunk phases are explicit calls; the inner dot / p·v loops take their
//   bounds from uniforms (dc_rt = DC, vk_rt = VK) so they stay rolled (≈ 4x less compile time); the loops
//   indexing register arrays (NS, NC) stay constant so the arrays stay in registers.
// Dispatch: n_qt*H*NB workgroups (n_qt = ceil(LQ/BQ)), linear id = wid.y*wg_x + wid.x, folded under
//   maxComputeWorkgroupsPerDimension. Linear id → (query tile, head, batch).
// Thread (r, tt) = (t / TPR, t % TPR): query row r of the tile; it owns scores of keys tt + TPR*j
//   (j < NS = ceil(BK/TPR), only keys < BK) and output columns tt + TPR*c (c < NC = ceil(DH/TPR)) in registers.
// Masked scores are NEG (finite: no inf - inf = NaN); a row that never saw a visible key has l = 0 and
//   writes 0. Causal: key ja visible to query ia iff ja <= ia + LK_FULL - LQ_FULL (bottom-right aligned;
//   the usual lower triangle when LQ == LK).
struct Params {
  lq: u32, lk: u32, h: u32, hkv: u32,
  q_off: u32, k_off: u32, lq_full: u32, lk_full: u32,
  b_off: u32, nb: u32, n_qt: u32, wg_x: u32,
  causal: u32, state_in: u32, finalize: u32, scale_log2: f32,
  dc_rt: u32, vk_rt: u32,   // = DC, VK as uniforms: keeps those loops rolled (see header)
}
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
#ifdef STATE
@group(0) @binding(B_ML) var<storage, read_write> ml: array<f32>;
#endif
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

const WG: u32 = BQ * TPR;
const NS: u32 = (BK + TPR - 1u) / TPR;   // keys per lane (lanes tt >= BK own none when BK < TPR)
const NC: u32 = (DH + TPR - 1u) / TPR;
const DHP: u32 = NC * TPR;
const KS: u32 = DC + 1u;          // padded K row in shared memory (no bank conflicts across tt)
const NEG: f32 = -3.0e38;

var<workgroup> sh: array<f32, SH>;      // q chunk | k chunk during q·k; V sub-tile during p·v
var<workgroup> pp: array<f32, BQ * BK>; // probabilities of the tile
var<workgroup> red: array<f32, WG>;     // per-thread partial max / sum
var<workgroup> any_vis: u32;

// Per-invocation indices the phase functions need (function-scope arrays stay in registers; module-scope
// privates made lavapipe's compile several times slower).
struct Ix { t: u32, r: u32, tt: u32, qt: u32, bb: u32, q_base: u32, k_base: u32, q_rs: u32, k_rs: u32, k0: u32 }

// Is key kk of this chunk visible to query row i of this chunk (batch bb)?
fn visible(bb: u32, i: u32, kk: u32) -> bool {
  if (i >= U.lq || kk >= U.lk) { return false; }
  let ia = U.q_off + i;
  let ja = U.k_off + kk;
  if (U.causal != 0u && ja + U.lq_full > ia + U.lk_full) { return false; }
#ifdef KEYMASK
  if (keymask[(U.b_off + bb) * U.lk_full + ja] == 0.0) { return false; }
#endif
#ifdef MASK
  if (mask[(bb * U.lq + i) * U.lk_full + ja] == 0.0) { return false; }
#endif
#ifdef SEG
  if (seg[ia] != seg[ja]) { return false; }
#endif
  return true;
}

// s[j] += q[row, d0:d0+DC] · k[k0 + tt + TPR*j, d0:d0+DC] through shared memory.
fn qk_chunk(d0: u32, x: Ix, s: ptr<function, array<f32, NS>>) {
  workgroupBarrier();
  for (var e = x.t; e < BQ * DC; e += WG) {
    let qi = x.qt * BQ + e / DC;
    let d = d0 + e % DC;
    var val = 0.0;
    if (qi < U.lq && d < DH) { val = q[x.q_base + qi * x.q_rs + d]; }
    sh[e] = val;
  }
  for (var e = x.t; e < BK * DC; e += WG) {
    let kk = e / DC;
    let d = d0 + e % DC;
    var val = 0.0;
    if (x.k0 + kk < U.lk && d < DH) { val = k[x.k_base + (x.k0 + kk) * x.k_rs + d]; }
    sh[BQ * DC + kk * KS + e % DC] = val;
  }
  workgroupBarrier();
  for (var dd = 0u; dd < U.dc_rt; dd++) {
    let qv = sh[x.r * DC + dd];
    for (var j = 0u; j < NS; j++) {
      let kk = min(x.tt + TPR * j, BK - 1u);   // lanes past BK compute a duplicate, masked later
      (*s)[j] += qv * sh[BQ * DC + kk * KS + dd];
    }
  }
}

// acc += p[:, v0:v0+VK] · V[x.k0+v0 : x.k0+v0+VK] (zero-filled past LK and DH: 0 * garbage could be NaN).
fn pv_chunk(v0: u32, x: Ix, acc: ptr<function, array<f32, NC>>) {
  workgroupBarrier();
  for (var e = x.t; e < VK * DHP; e += WG) {
    let key = x.k0 + v0 + e / DHP;
    let col = e % DHP;
    var val = 0.0;
    if (key < U.lk && col < DH) { val = v[x.k_base + key * x.k_rs + col]; }
    sh[e] = val;
  }
  workgroupBarrier();
  for (var kk = 0u; kk < U.vk_rt; kk++) {
    let p = pp[x.r * BK + v0 + kk];
    for (var c = 0u; c < NC; c++) { (*acc)[c] += p * sh[kk * DHP + x.tt + TPR * c]; }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let gid = wid.y * U.wg_x + wid.x;
  // Control flow must use these lets: the uniformity analysis treats module-scope privates as varying.
  let qtu = gid % U.n_qt;
  let hb = gid / U.n_qt;
  let h = hb % U.h;
  let bbu = hb / U.h;
  if (bbu >= U.nb) { return; }   // uniform: depends on the workgroup id only

  let t = lid;
  let r = t / TPR;
  let tt = t % TPR;
  let qt = qtu;
  let bb = bbu;
  let i = qt * BQ + r;
  let row_ok = i < U.lq;
  let hk = h / (U.h / U.hkv);
  let q_rs = U.h * DH;
  let k_rs = U.hkv * DH;
  let q_base = (bb * U.lq * U.h + h) * DH;   // + row * q_rs
  let k_base = (bb * U.lk * U.hkv + hk) * DH;  // + key * k_rs
  var acc: array<f32, NC>;
  var s: array<f32, NS>;
  let row = (bb * U.lq + i) * U.h + h;        // row index into ml

  for (var c = 0u; c < NC; c++) { acc[c] = 0.0; }
  var m = NEG;
  var lsum = 0.0;
#ifdef STATE
  if (U.state_in != 0u && row_ok) {
    m = ml[2u * row];
    if (tt == 0u) { lsum = ml[2u * row + 1u]; }   // the row total lives in one lane's partial sum
    for (var c = 0u; c < NC; c++) {
      let col = tt + TPR * c;
      if (col < DH) { acc[c] = o[q_base + i * q_rs + col]; }
    }
  }
#endif

  // Causal: keys past the tile's last row's diagonal are never visible; stop the loop there.
  var k_end = U.lk;
  if (U.causal != 0u) {
    let last = i32(U.q_off + min(qtu * BQ + BQ, U.lq)) - 1;
    let lim = last + i32(U.lk_full) - i32(U.lq_full) - i32(U.k_off) + 1;
    k_end = u32(clamp(lim, 0, i32(U.lk)));
  }
  let n_kt = (k_end + BK - 1u) / BK;

  for (var kt = 0u; kt < n_kt; kt++) {
    let k0 = kt * BK;
    let x = Ix(t, r, tt, qt, bb, q_base, k_base, q_rs, k_rs, k0);
    var vmask = 0u;
    for (var j = 0u; j < NS; j++) {
      let kk = tt + TPR * j;
      if (kk < BK && visible(bb, i, k0 + kk)) { vmask |= 1u << j; }
    }
#ifdef SKIP
    workgroupBarrier();
    if (t == 0u) { any_vis = 0u; }
    workgroupBarrier();
    if (vmask != 0u) { any_vis = 1u; }
    if (workgroupUniformLoad(&any_vis) == 0u) { continue; }
#endif

    for (var j = 0u; j < NS; j++) { s[j] = 0.0; }
    qk_chunk(0u, x, &s);
#ifdef QK2
    qk_chunk(DC, x, &s);
#endif
#ifdef QK4
    qk_chunk(2u * DC, x, &s);
    qk_chunk(3u * DC, x, &s);
#endif

    // ---- online softmax: row max over the TPR lanes of the row, then p = exp2(s - m)
    var tmax = NEG;
    for (var j = 0u; j < NS; j++) {
      s[j] = select(NEG, s[j] * U.scale_log2, ((vmask >> j) & 1u) != 0u);
      tmax = max(tmax, s[j]);
    }
    red[t] = tmax;
    workgroupBarrier();
    for (var u = 0u; u < TPR; u++) { tmax = max(tmax, red[r * TPR + u]); }
    let m_new = max(m, tmax);
    let alpha = exp2(m - m_new);
    m = m_new;
    var psum = 0.0;
    for (var j = 0u; j < NS; j++) {
      let kk = tt + TPR * j;
      let p = select(0.0, exp2(s[j] - m_new), ((vmask >> j) & 1u) != 0u);
      if (kk < BK) { pp[r * BK + kk] = p; }
      psum += p;
    }
    lsum = lsum * alpha + psum;
    for (var c = 0u; c < NC; c++) { acc[c] *= alpha; }

    pv_chunk(0u, x, &acc);
#ifdef PV2
    pv_chunk(VK, x, &acc);
#endif
  }

  // ---- row sum over the TPR lanes, then normalise (or store the running state)
  workgroupBarrier();
  red[t] = lsum;
  workgroupBarrier();
  var l = 0.0;
  for (var u = 0u; u < TPR; u++) { l += red[r * TPR + u]; }
  if (!row_ok) { return; }
  let ob = q_base + i * q_rs;
#ifdef STATE
  if (U.finalize == 0u) {
    for (var c = 0u; c < NC; c++) {
      let col = tt + TPR * c;
      if (col < DH) { o[ob + col] = acc[c]; }
    }
    if (tt == 0u) {
      ml[2u * row] = m;
      ml[2u * row + 1u] = l;
    }
    return;
  }
#endif
  var keep = l > 0.0;
#ifdef QMASK
  keep = keep && qmask[(U.b_off + bb) * U.lq_full + U.q_off + i] != 0.0;
#endif
  let inv = select(0.0, 1.0 / l, keep);
  for (var c = 0u; c < NC; c++) {
    let col = tt + TPR * c;
    if (col < DH) { o[ob + col] = select(0.0, acc[c] * inv, keep); }
  }
}

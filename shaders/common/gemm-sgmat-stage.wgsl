// K-tile staging for gemm-sgmat.wgsl (included once, after common/gemm-sgmat-access.wgsl): stage() copies
// k-tile k0 of x rows [m0, m0 + BM) into the A tile As and W rows [n0, n0 + BN) into the B tile Bs of one
// of the two buffers, narrowed to f16 (narrow(): a value beyond ±65504 becomes 0 and sets `bad`, which
// sends the workgroup to the f32 recompute). Tiles: As [2][BM][BKP] row-major, Bs [2][BN][BKP] (the K x N
// operand column-major), zeros outside the matrix.
// Defines read: VEC / XVEC (x and w by vec4), WVEC (w by vec4: 4 f32 or 8 packed bf16/f16), QUANT (quads of
// codes times the block scale), CONV (A gathered per pixel), ADIRECT (no A tile: A is loaded from x), WDT.

// Narrow to f16; out-of-range values (|v| > 65504, inf) are replaced by 0 and reported.
fn narrow(v: f32, bad: ptr<function, bool>) -> f16 {
  let over = abs(v) > F16_MAX;
  *bad = *bad || over;
  return f16(select(v, 0.0, over));
}

#ifdef WVEC
#ifndef QUANT
// W rows [n0, n0 + BN) x k-tile k0 into Bs at bb by vectors: 4 f32 or 8 packed bf16/f16 per load (each pair
// unpacked once); the GEMM (VEC) and the conv (WVEC) alike. The row stride w_ld(), w_off and K are multiples
// of the vector width and k0, BK of 8, so a vector lies wholly inside or outside [0, K) and starts on a
// vector boundary.
fn stage_w_vec(bb: u32, n0: u32, k0: u32, li: u32, bad: ptr<function, bool>) {
#if WDT == f32
  for (var e = li; e < BN * BK / 4u; e += WG) {
    let c = e / (BK / 4u);
    let kk = (e % (BK / 4u)) * 4u;
    let n = n0 + c;
    let k = k0 + kk;
    var v = vec4<f32>();
    if (n < U.N && k < U.K) { v = w[(U.w_off + n * w_ld() + k) >> 2u]; }
    let o = bb + c * BKP + kk;
    Bs[o] = narrow(v.x, bad); Bs[o + 1u] = narrow(v.y, bad); Bs[o + 2u] = narrow(v.z, bad); Bs[o + 3u] = narrow(v.w, bad);
  }
#else
  for (var e = li; e < BN * BK / 8u; e += WG) {
    let c = e / (BK / 8u);
    let kk = (e % (BK / 8u)) * 8u;
    let n = n0 + c;
    let k = k0 + kk;
    var v = vec4<u32>();
    if (n < U.N && k < U.K) { v = w[(U.w_off + n * w_ld() + k) >> 3u]; }
    let o = bb + c * BKP + kk;
    for (var j = 0u; j < 4u; j++) {
#if WDT == bf16
      let lo = bitcast<f32>(v[j] << 16u);
      let hi = bitcast<f32>(v[j] & 0xffff0000u);
#else
      let p = unpack2x16float(v[j]);
      let lo = p.x;
      let hi = p.y;
#endif
      Bs[o + 2u * j] = narrow(lo, bad);
      Bs[o + 2u * j + 1u] = narrow(hi, bad);
    }
  }
#endif
}
#endif
#endif

// Stage k-tile k0 of x rows [m0, m0+BM) (not with ADIRECT) and W rows [n0, n0+BN) into buffer `buf`
// (zeros outside the matrix).
fn stage(buf: u32, m0: u32, n0: u32, k0: u32, li: u32, bad: ptr<function, bool>) {
  let bb = buf * BBUF;
#ifndef ADIRECT
  let ab = buf * ABUF;
#endif
#ifdef VEC
#ifdef XVEC
  // K % 8 == 0 and k0 % 8 == 0: a vector is wholly inside or wholly outside [0, K).
  for (var e = li; e < BM * BK / 4u; e += WG) {
    let r = e / (BK / 4u);
    let kk = (e % (BK / 4u)) * 4u;
    let m = m0 + r;
    let k = k0 + kk;
    var v = vec4<f32>();
    if (m < U.M && k < U.K) { v = vec4<f32>(x[(U.x_off + m * U.K + k) >> 2u]); }
    let o = ab + r * BKP + kk;
    As[o] = narrow(v.x, bad); As[o + 1u] = narrow(v.y, bad); As[o + 2u] = narrow(v.z, bad); As[o + 3u] = narrow(v.w, bad);
  }
#endif
#ifdef QUANT
  // K % 4 == 0 (every packed format): a quad of codes is wholly inside or outside [0, K); codes times the
  // block scale are narrowed to f16 once, here.
  for (var e = li; e < BN * BK / 4u; e += WG) {
    let c = e / (BK / 4u);
    let kk = (e % (BK / 4u)) * 4u;
    let n = n0 + c;
    let k = k0 + kk;
    var v = vec4<f32>();
    if (n < U.N && k < U.K) { v = wquad(U.w_off + n * U.row_words, U.s_off + n * U.nb, k >> 2u); }
    let o = bb + c * BKP + kk;
    Bs[o] = narrow(v.x, bad); Bs[o + 1u] = narrow(v.y, bad); Bs[o + 2u] = narrow(v.z, bad); Bs[o + 3u] = narrow(v.w, bad);
  }
#else
  stage_w_vec(bb, n0, k0, li, bad);
#endif
#else
#ifdef CONV
  // Gathered A: neighbouring lanes take neighbouring output pixels (neighbouring input pixels in NCHW).
  // The planned tiles have WG % BM == 0: each lane then keeps one pixel (decoded once) and walks k.
  if (WG % BM == 0u) {
    let r = li % BM;
    let m = m0 + r;
    let base = a_base(m);
    for (var kk = li / BM; kk < BK; kk += WG / BM) {
      let k = k0 + kk;
      var v = 0.0;
      if (m < U.M && k < U.K) { v = a_tap(base, k); }
      As[ab + r * BKP + kk] = narrow(v, bad);
    }
  } else {
    for (var e = li; e < BM * BK; e += WG) {
      let r = e % BM;
      let kk = e / BM;
      let m = m0 + r;
      let k = k0 + kk;
      var v = 0.0;
      if (m < U.M && k < U.K) { v = a_val(m, k); }
      As[ab + r * BKP + kk] = narrow(v, bad);
    }
  }
#else
#ifndef ADIRECT
  for (var e = li; e < BM * BK; e += WG) {
    let r = e / BK;
    let kk = e % BK;
    let m = m0 + r;
    let k = k0 + kk;
    var v = 0.0;
    if (m < U.M && k < U.K) { v = a_val(m, k); }
    As[ab + r * BKP + kk] = narrow(v, bad);
  }
#endif
#endif
#ifdef WVEC
  stage_w_vec(bb, n0, k0, li, bad);   // CONV with vector-aligned weight rows
#else
  for (var e = li; e < BN * BK; e += WG) {
    let c = e / BK;
    let kk = e % BK;
    let n = n0 + c;
    let k = k0 + kk;
    var v = 0.0;
    if (n < U.N && k < U.K) { v = wval(n, k); }
    Bs[bb + c * BKP + kk] = narrow(v, bad);
  }
#endif
#endif
}

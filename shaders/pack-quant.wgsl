// Block quantization of a chunk of bf16 weights into q8 / q4 codes and f16 scales, on the GPU, bit for bit
// the result of io/quant.ts quantizeBlocks (its plain-TS reference; test/weight-load.test.ts compares them).
//   block j of QBLOCK = 32 weights: m = max |bits| (|bf16| orders as its low 15 bits), scale bits = table[m]
//   (computed on the host by the reference itself, NaN / Inf blocks included), code = round-half-up(w / s)
//   clamped to [QMIN, QMAX], exact: an f32 quotient proposes the code and exact f32 products settle it
//   (codes4). Vectorised over 4 words (8 weights) at a time, no integer division and no f32 → int
//   conversion (which CPU backends such as lavapipe run far slower than the rest).
// Defines: FMT = q8 | q4; QSKEW (tests only) = a factor near 1 applied to the quotient, as an inexact
//   reciprocal may be off, so that lavapipe's exact division still exercises the correction.
// Bindings: 0 uniform {pairs, blocks, code_word0, scale_word0}; 1 x (vec4<u32> [chunk / 8]: bf16 pairs, row-major
//   [rows, K] of the chunk); 2 table (u32 [32768]: f16 scale bits per m); 3 codes (vec4<u32>, rw: the whole
//   weight, q8 4 codes per word, q4 8 nibbles, code + 8, low nibble first; a block's codes are whole vectors); 4 scales (u32, rw: f16 pairs).
// One invocation per two blocks (so that it owns one whole scale word); workgroups of 64 along x. The host
// starts every chunk on an even block, so scale words never straddle chunks; a chunk of an odd block count
// (the weight's last) leaves its last scale word's high half 0.

struct Params { pairs: u32, blocks: u32, code_word0: u32, scale_word0: u32 }
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>; // a block per 4 vectors
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> codes: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> scales: array<u32>;

#if FMT == q8
const QMAX: i32 = 127;
const QMIN: i32 = -127;
#else
const QMAX: i32 = 7;
const QMIN: i32 = -8;
#endif

// f32 value of the positive finite f16 scale bits sb, built from its fields: exact for subnormal scales
// (a block max below 127 · 2^-14) on GPUs that flush f16 denormals in unpack2x16float.
fn scale_f32(sb: u32) -> f32 {
  let es = (sb >> 10u) & 0x1fu;
  let ms = sb & 0x3ffu;
  return select(bitcast<f32>(((es + 112u) << 23u) | (ms << 13u)), f32(ms) * 0x1p-24f, es == 0u);
}

// round-half-up(w / s) clamped, for four finite weights w (f32, from bf16) and a positive finite scale s
// with r ≈ 1 / s, as two's complement bits (the caller keeps the low 8 / 4). The quotient |w|·r only proposes
// the magnitude c0 (within one of the truth, as |w|·r is within a few ulp of |w| / s and c0 ≤ 256); exact
// arithmetic then settles it: |w| has 8 significant bits and s 11, so 2c0·s (c0 ≤ 256), d = 2|w| − 2c0·s and
// d ∓ s are exact in f32 (c0 = 0 gives d = 2|w|; else |w| ≥ s / 4 and all are multiples of s's ulp), and
//   w ≥ 0: c = floor(|w|/s + 1/2):   up ⇔ d − s ≥ 0, down ⇔ d + s < 0
//   w < 0: |c| = ceil(|w|/s − 1/2):  up ⇔ d − s > 0, down ⇔ d + s ≤ 0   (Math.round's tie towards +∞)
// An exact zero difference is +0, so each test is one signed-integer compare of its bits against n (1 for
// w < 0, else 0). Integer-valued f32 become integers by their bits (c0 + 2^23), never by a conversion: CPU
// backends (lavapipe) run f32 → i32 conversions, saturating as WGSL wants, far slower than the rest.
// A subnormal |w| (flushed or not) gives 0, as it must: |w| < 2^-126 and s ≥ 2^-24.
fn codes4(w: vec4<f32>, s: f32, r: f32) -> vec4<u32> {
  let n = vec4<i32>(bitcast<vec4<u32>>(w) >> vec4<u32>(31u));
  let aw = abs(w);
#ifdef QSKEW
  let c0 = floor(min(aw * r * QSKEW, vec4<f32>(256.0)) + 0.5); // tests: a quotient off by a factor
#else
  let c0 = floor(min(aw * r, vec4<f32>(256.0)) + 0.5);
#endif
  let d = 2.0 * aw - c0 * (2.0 * s);
  let up = select(vec4<u32>(0u), vec4<u32>(1u), bitcast<vec4<i32>>(d - s) >= n);
  let down = select(vec4<u32>(0u), vec4<u32>(1u), bitcast<vec4<i32>>(d + s) < n);
  let c = (bitcast<vec4<u32>>(c0 + 8388608.0) & vec4<u32>(0x3ffu)) + up - down;
  let neg = vec4<u32>(0u) - vec4<u32>(n);
  return (min(c, select(vec4<u32>(u32(QMAX)), vec4<u32>(u32(-QMIN)), n != vec4<i32>(0))) ^ neg) - neg;
}

// Codes of the weights of word vector v (two bf16 each: the low halves are the even weights) in a block
// whose scale bits are sb, as two's complement bits; NaN, Inf and zero scales as the reference. Selects, not
// branches: on CPU backends a branch that differs between invocations masks everything after it.
fn block_codes(v: vec4<u32>, sb: u32, even: ptr<function, vec4<u32>>, odd: ptr<function, vec4<u32>>) {
  let s = scale_f32(sb);
  let r = 1.0 / s;
  let e = codes4(bitcast<vec4<f32>>(v << vec4<u32>(16u)), s, r);
  let o = codes4(bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u)), s, r);
  // s = +Inf (a block holding ±Inf, or an f16-overflowing max): w / Inf = 0; ±Inf / Inf = NaN, stored as
  // byte 0 (q8) / nibble 0 (q4) by the reference's integer conversion
  let inf = vec4<u32>(select(0u, 0u - 8u, QMIN == -8)); // q4: code -8 (nibble 0), q8: code 0
  let z = vec4<u32>(0u);
  let ie = select(z, inf, (v & vec4<u32>(0x7f80u)) == vec4<u32>(0x7f80u));
  let io = select(z, inf, ((v >> vec4<u32>(16u)) & vec4<u32>(0x7f80u)) == vec4<u32>(0x7f80u));
  let sinf = (sb & 0x7c00u) == 0x7c00u;
  let zero = (sb & 0x7fffu) == 0u || (sinf && (sb & 0x3ffu) != 0u); // s = 0 or NaN: code 0
  *even = select(select(e, ie, sinf), z, zero);
  *odd = select(select(o, io, sinf), z, zero);
}

// q8: weights 2k (e[k]) and 2k + 1 (o[k]) of a word are bytes 2k and 2k + 1
fn q8word(e: vec2<u32>, o: vec2<u32>) -> u32 {
  let be = e & vec2<u32>(0xffu);
  let bo = o & vec2<u32>(0xffu);
  return be.x | (bo.x << 8u) | (be.y << 16u) | (bo.y << 24u);
}

// q4: weight k of a word is nibble k (code + 8)
fn q4word(e: vec4<u32>, o: vec4<u32>) -> u32 {
  let ne = (e + vec4<u32>(8u)) & vec4<u32>(0xfu);
  let no = (o + vec4<u32>(8u)) & vec4<u32>(0xfu);
  return ne.x | (no.x << 4u) | (ne.y << 8u) | (no.y << 12u) | (ne.z << 16u) | (no.z << 20u) | (ne.w << 24u) | (no.w << 28u);
}

// No branch that differs between invocations before the stores (a tail invocation repeats the last pair or
// block and stores nothing): CPU backends (lavapipe) then load without per-invocation masks, ~1.4× faster.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let p = min(gid.x, U.pairs - 1u);
  var sw = 0u;
  for (var h = 0u; h < 2u; h++) {
    let j = min(2u * p + h, U.blocks - 1u);
    let own = gid.x < U.pairs && 2u * p + h < U.blocks;
    // the block's 32 bf16 as 4 vectors of 4 words (weights 8i .. 8i + 7 in vector i)
    let v0 = x[4u * j];
    let v1 = x[4u * j + 1u];
    let v2 = x[4u * j + 2u];
    let v3 = x[4u * j + 3u];
    let lo = vec4<u32>(0x7fffu);
    let mv = max(max(max(v0 & lo, (v0 >> vec4<u32>(16u)) & lo), max(v1 & lo, (v1 >> vec4<u32>(16u)) & lo)),
                 max(max(v2 & lo, (v2 >> vec4<u32>(16u)) & lo), max(v3 & lo, (v3 >> vec4<u32>(16u)) & lo)));
    let sb = table[max(max(mv.x, mv.y), max(mv.z, mv.w))];
    sw = sw | (select(0u, sb, own) << (16u * h));
    var e0: vec4<u32>; var o0: vec4<u32>; var e1: vec4<u32>; var o1: vec4<u32>;
    var e2: vec4<u32>; var o2: vec4<u32>; var e3: vec4<u32>; var o3: vec4<u32>;
    block_codes(v0, sb, &e0, &o0);
    block_codes(v1, sb, &e1, &o1);
    block_codes(v2, sb, &e2, &o2);
    block_codes(v3, sb, &e3, &o3);
#if FMT == q8
    // the block's 8 code words as 2 vectors; word 2i + t holds weights 8i + 4t .. 8i + 4t + 3
    let c0 = vec4<u32>(q8word(e0.xy, o0.xy), q8word(e0.zw, o0.zw), q8word(e1.xy, o1.xy), q8word(e1.zw, o1.zw));
    let c1 = vec4<u32>(q8word(e2.xy, o2.xy), q8word(e2.zw, o2.zw), q8word(e3.xy, o3.xy), q8word(e3.zw, o3.zw));
    if (own) {
      codes[U.code_word0 / 4u + 2u * j] = c0;
      codes[U.code_word0 / 4u + 2u * j + 1u] = c1;
    }
#else
    // the block's 4 code words as 1 vector; word i holds weights 8i .. 8i + 7
    let c0 = vec4<u32>(q4word(e0, o0), q4word(e1, o1), q4word(e2, o2), q4word(e3, o3));
    if (own) { codes[U.code_word0 / 4u + j] = c0; }
#endif
  }
  if (gid.x < U.pairs) { scales[U.scale_word0 + p] = sw; }
}

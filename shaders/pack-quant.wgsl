// Block quantization of a chunk of bf16 weights into q8 / q4 codes and f16 scales, on the GPU, bit for bit
// the result of io/quant.ts quantizeBlocks (its plain-TS reference; test/weight-load.test.ts compares them).
//   block j of QBLOCK = 32 weights: m = max |bits| (|bf16| orders as its low 15 bits), scale bits = table[m]
//   (computed on the host by the reference itself, NaN / Inf blocks included), code = round-half-up(w / s)
//   clamped to [QMIN, QMAX], in exact integer arithmetic: w = mw·2^ew (8 significant bits), s = ms·2^es
//   (11), so w / s = mw / ms · 2^d and floor(w/s + 1/2) = floor((2·mw·2^d + ms) / (2·ms)), all in u32.
// Defines: FMT = q8 | q4.
// Bindings: 0 uniform {pairs, blocks, code_word0, scale_word0}; 1 x (u32 [chunk / 2]: bf16 pairs, row-major
//   [rows, K] of the chunk); 2 table (u32 [32768]: f16 scale bits per m); 3 codes (u32, rw: the whole
//   weight, q8 4 codes per word, q4 8 nibbles, code + 8, low nibble first); 4 scales (u32, rw: f16 pairs).
// One invocation per two blocks (so that it owns one whole scale word); workgroups of 64 along x. The host
// starts every chunk on an even block, so scale words never straddle chunks.

struct Params { pairs: u32, blocks: u32, code_word0: u32, scale_word0: u32 }
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<u32>;

#if FMT == q8
const QMAX: i32 = 127;
const QMIN: i32 = -127;
#else
const QMAX: i32 = 7;
const QMIN: i32 = -8;
#endif

fn bf16_bits(i: u32) -> u32 {
  return (x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

// round-half-up(w / s) clamped, for a finite bf16 w and a positive finite f16 scale s (bits sb).
fn code_of(wb: u32, sb: u32) -> i32 {
  let ew = (wb >> 7u) & 0xffu;
  let mw = select(wb & 0x7fu, (wb & 0x7fu) | 0x80u, ew != 0u);
  let es = (sb >> 10u) & 0x1fu;
  let ms = select(sb & 0x3ffu, (sb & 0x3ffu) | 0x400u, es != 0u);
  if (mw == 0u) { return 0; }
  // d = (ew' - 127 - 7) - (es' - 15 - 10), with the subnormal exponents 1
  let d = i32(max(ew, 1u)) - 134 - (i32(max(es, 1u)) - 25);
  let neg = (wb & 0x8000u) != 0u;
  if (d > 20) { return select(QMAX, QMIN, neg); } // |w / s| > 2^20: clamped (cannot happen with a block's own scale)
  if (d <= -10) { return 0; } // |w / s| < 255 · 2^-10 < 1/2
  var num: u32;
  var msk: u32; // ms·2^k for d = -k < 0, else ms
  if (d >= 0) { num = (2u * mw) << u32(d); msk = ms; } else { num = 2u * mw; msk = ms << u32(-d); }
  let den = 2u * msk;
  var c: i32;
  if (!neg) {
    c = i32((num + msk) / den);
  } else if (num > msk) {
    c = -i32((num - msk + den - 1u) / den); // floor(-x + 1/2) = -ceil(x - 1/2)
  } else {
    c = 0;
  }
  return clamp(c, QMIN, QMAX);
}

// The code of weight bits wb in a block whose scale bits are sb (NaN, Inf and zero scales as the reference).
fn block_code(wb: u32, sb: u32) -> i32 {
  let sexp = sb & 0x7c00u;
  if ((sb & 0x7fffu) == 0u || (sexp == 0x7c00u && (sb & 0x3ffu) != 0u)) { return 0; } // s = 0 or NaN: code 0
  if (sexp == 0x7c00u) {
    // s = +Inf (a block holding ±Inf, or an f16-overflowing max): w / Inf = 0; ±Inf / Inf = NaN, stored as
    // byte 0 (q8) / nibble 0 (q4) by the reference's integer conversion
    if ((wb & 0x7f80u) == 0x7f80u) { return select(0, -8, QMIN == -8); }
    return 0;
  }
  return code_of(wb, sb);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let p = gid.x;
  if (p >= U.pairs) { return; }
  var sw = 0u;
  for (var h = 0u; h < 2u; h++) {
    let j = 2u * p + h;
    if (j >= U.blocks) { break; }
    let base = j * 32u;
    var m = 0u;
    for (var i = 0u; i < 32u; i++) { m = max(m, bf16_bits(base + i) & 0x7fffu); }
    let sb = table[m];
    sw = sw | (sb << (16u * h));
#if FMT == q8
    for (var w = 0u; w < 8u; w++) {
      var word = 0u;
      for (var b = 0u; b < 4u; b++) { word = word | ((u32(block_code(bf16_bits(base + 4u * w + b), sb)) & 0xffu) << (8u * b)); }
      codes[U.code_word0 + j * 8u + w] = word;
    }
#else
    for (var w = 0u; w < 4u; w++) {
      var word = 0u;
      for (var b = 0u; b < 8u; b++) { word = word | ((u32(block_code(bf16_bits(base + 8u * w + b), sb) + 8) & 0xfu) << (4u * b)); }
      codes[U.code_word0 + j * 4u + w] = word;
    }
#endif
  }
  scales[U.scale_word0 + p] = sw;
}

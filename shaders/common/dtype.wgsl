// dtype helpers. bf16 and f16 tensors are stored packed two per u32 (element i in the low half of
// word i/2 when i is even). Widening bf16 is exact: bitcast<f32>(bits << 16).

fn bf16_at(words: u32, i: u32) -> f32 {
  let shift = (i & 1u) * 16u;
  return bitcast<f32>(((words >> shift) & 0xffffu) << 16u);
}

fn f16_at(words: u32, i: u32) -> f32 {
  return unpack2x16float(words)[i & 1u];
}

// round-to-nearest-even f32 -> bf16 bits
fn f32_to_bf16_bits(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0u) { return ((u >> 16u) | 0x40u) & 0xffffu; }
  return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}

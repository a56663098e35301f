// Widening cast to f32: out[i] = f32(x[i]) for a flat tensor of n elements.
// Defines: SRC_DT = bf16 | f16 (both stored packed two per u32; element i is word i/2, half i%2).
// Bindings: 0 uniform {n, wg_x}; 1 x (u32, packed halves); 2 out (f32 [n], rw).
// Dispatch: ceil(n / 256) workgroups of 256 folded into (wg_x, y). The host splits tensors over the
// binding limit into chunks that start on 128-element (256-byte) boundaries, so parity is preserved.
#include "common/dtype.wgsl"

struct Params { n: u32, wg_x: u32 }
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
#if SRC_DT == bf16
  out[i] = bf16_at(x[i >> 1u], i);
#else
  out[i] = f16_at(x[i >> 1u], i);
#endif
}

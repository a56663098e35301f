// Elementwise unary/binary ops over flat f32 tensors.
// Bindings: 0 uniform {n, n_b, wg_x, alpha:f32, beta:f32}; 1 a (f32, read); 2 b (f32, read; BINARY only); 3 out (f32).
// Defines: OP = silu | gelu_tanh | gelu_erf | scale | add | mul | sub ; BINARY when two inputs.
//   b broadcasts by flat index modulo n_b (so [C] over [L, C] works).
// Dispatch: ceil(n / 256) workgroups of 256, folded into (wg_x, y) when over 65535.
struct Params { n: u32, n_b: u32, wg_x: u32, alpha: f32, beta: f32 }
@group(0) @binding(0) var<uniform> U: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
#ifdef BINARY
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif

#include "common/math.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
  let x = a[i];
#if OP == silu
  out[i] = silu_f(x);
#endif
#if OP == gelu_tanh
  out[i] = gelu_tanh_f(x);
#endif
#if OP == gelu_erf
  out[i] = gelu_erf_f(x);
#endif
#if OP == scale
  out[i] = x * U.alpha + U.beta;
#endif
#if OP == add
  out[i] = x + b[i % U.n_b];
#endif
#if OP == sub
  out[i] = x - b[i % U.n_b];
#endif
#if OP == mul
  out[i] = x * b[i % U.n_b];
#endif
}

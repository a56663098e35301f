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

fn erf_approx(x: f32) -> f32 {
  // Abramowitz–Stegun 7.1.26 is too coarse (1.5e-7 abs is fine for f32 but we use a tighter series):
  // erf via erfc rational approximation (Numerical Recipes erfcc), |err| < 1.2e-7.
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
          t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
          t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
  let x = a[i];
#if OP == silu
  out[i] = x / (1.0 + exp(-x));
#endif
#if OP == gelu_tanh
  let c = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  out[i] = 0.5 * x * (1.0 + tanh(clamp(c, -15.0, 15.0)));
#endif
#if OP == gelu_erf
  out[i] = 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476));
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

// Shared math for kernels that fuse activations (elementwise.wgsl, gemm.wgsl).

// erf via the erfc rational approximation of Numerical Recipes (erfcc), |err| < 1.2e-7.
fn erf_approx(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
          t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
          t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}

fn silu_f(x: f32) -> f32 { return x / (1.0 + exp(-x)); }

// tanh-approximated GELU (FLUX, DiT MLPs); the clamp keeps tanh finite on every backend.
fn gelu_tanh_f(x: f32) -> f32 {
  let c = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  return 0.5 * x * (1.0 + tanh(clamp(c, -15.0, 15.0)));
}

// exact (erf) GELU (Qwen2.5-VL merger)
fn gelu_erf_f(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); }

// Writes to f16 activation storage (src/ops/act-dtype.ts). Needs from the including shader, when O16:
// `enable f16;` and the binding `ovf: array<atomic<u32>>` (ops/plan-gemm.ts overflowCounter).
// O16: a value beyond ±65504 (or inf) is stored clamped and counted in ovf[2]; the step that wrote it is
// redone with f32 storage. Without O16 the value is stored as is (f32), so the f32 path is unchanged.
#ifdef O16
fn to_out(v: f32) -> f16 {
  let over = abs(v) > 65504.0;
  if (over) { atomicAdd(&ovf[2], 1u); }
  return f16(select(v, clamp(v, -65504.0, 65504.0), over));
}
#else
fn to_out(v: f32) -> f32 {
  return v;
}
#endif

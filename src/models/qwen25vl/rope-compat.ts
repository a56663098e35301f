/**
 * TEMPORARY stand-in for ops/rope.ts `applyRopeHalf` until that kernel lands: rotate_half RoPE from
 * existing ops. x [B, L, H, Dh]; cos/sin [1, L, Dh] are tiled over heads, rotate_half(x) = x·R with the
 * exact ±1 matrix R [Dh, Dh] (one nonzero term per output, so the GEMM is exact).
 */
import type { Tensor } from '../../runtime/tensor.js';
import { linear } from '../../ops/linear.js';
import { add, mul } from '../../ops/elementwise.js';

function tiled(t: Tensor, H: number): Tensor {
  {
    // cos/sin are small host tables: read once synchronously is impossible, so tile with a GEMM:
    // [L, 1, Dh] -> [L, H, Dh] via linear with a [H·Dh, Dh] stacked identity.
    const Dh = t.shape[t.rank - 1], L = t.numel / Dh;
    const eye = new Float32Array(H * Dh * Dh);
    for (let h = 0; h < H; h++) for (let d = 0; d < Dh; d++) eye[(h * Dh + d) * Dh + d] = 1;
    const I = t.gpu.upload(eye, [H * Dh, Dh]);
    const flat = t.reshape([L, Dh]);
    const out = linear(flat, I);
    flat.dispose();
    I.dispose();
    const r = out.reshape([L, H, Dh]);
    out.dispose();
    return r;
  }
}

export function applyRopeHalf(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const [B, L, H, Dh] = x.shape;
  const R = new Float32Array(Dh * Dh); // out[j] = sum_i x[i] R[j, i]
  const half = Dh / 2;
  for (let j = 0; j < half; j++) R[j * Dh + j + half] = -1; // out[j] = -x[j + half]
  for (let j = half; j < Dh; j++) R[j * Dh + j - half] = 1; // out[j] = x[j - half]
  const Rt = x.gpu.upload(R, [Dh, Dh]);
  const rot = linear(x, Rt);
  Rt.dispose();
  const c = tiled(cos, H), s = tiled(sin, H);
  if (B !== 1) throw new Error('rope-compat: B = 1 only');
  const a = mul(x, c);
  const b = mul(rot, s);
  rot.dispose();
  c.dispose();
  s.dispose();
  const out = add(a, b);
  a.dispose();
  b.dispose();
  return out;
}

/**
 * attention (src/ops/attention.ts) vs the f64 reference: odd lengths, head dims 12..512, GQA 4:1 / 7:1,
 * every mask kind incl. fully-masked rows, Lq != Lk, and the binding-split path (forced small limit).
 * Outputs are poisoned (the op's output buffer is a recycled NaN-filled one) so skipped rows fail.
 * Tolerance: f32 accumulation over ≤ 300 keys of O(1) values: atol 2e-5, rtol 1e-4.
 * On the subgroup-matrix plan (f16 q/k/v/p, f32 accumulation; src/ops/plan-attention.ts) the f16 bound:
 * a score moves by at most δ = scale·2^-10·Σ_d|q_d k_d| ≤ scale·2^-10·Dh·amp², which changes the
 * softmax weights by a factor within e^{±2δ}; v and p round by 2^-11 each, so
 * |err| ≤ (2^-10 + 2.2·δ)·max|v| + 2e-5 (max|v| ≤ 1 here), checked with the plan's dispatch counted.
 */
import { getGpu, releaseGpu, randn, expectClose, rng } from './harness.js';
import { attentionRef, type RefAttnOpts } from './ref/attention.js';
import { attention, attentionVariant } from '../src/ops/attention.js';
import { planAttention } from '../src/ops/plan-attention.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';

afterAll(releaseGpu);

const ATOL = 2e-5, RTOL = 1e-4;

/** Poison a buffer of `shape` and hand it back to the pool: the next g.empty of that size reuses it. */
function poisonNext(g: Gpu, shape: number[]): void {
  const t = g.empty(shape);
  g.writeInto(t, new Float32Array(t.numel).fill(NaN));
  t.dispose();
}

interface Case {
  B: number; Lq: number; Lk: number; H: number; Hkv: number; Dh: number;
  causal?: boolean; keyMask?: boolean; mask?: boolean; segments?: boolean; queryMask?: boolean; scale?: number;
  seed: number; amp?: number;
}

function name(c: Case): string {
  const f = ['causal', 'keyMask', 'mask', 'segments', 'queryMask'].filter((k) => (c as unknown as Record<string, unknown>)[k]);
  return `B=${c.B} Lq=${c.Lq} Lk=${c.Lk} H=${c.H}/${c.Hkv} Dh=${c.Dh}${f.length ? ' ' + f.join('+') : ''}${c.scale ? ` scale=${c.scale}` : ''}`;
}

/** Masks with fully-masked rows / batches on purpose. */
function makeMasks(c: Case) {
  const r = rng(c.seed * 7 + 1);
  const o: RefAttnOpts = { causal: c.causal, scale: c.scale };
  if (c.keyMask) {
    const km = new Float32Array(c.B * c.Lk).map(() => (r() < 0.7 ? 1 : 0));
    if (c.B > 1) km.fill(0, c.Lk, 2 * c.Lk); // batch 1 sees no key at all → zeros
    km[0] = 1;
    o.keyMask = km;
  }
  if (c.mask) {
    const m = new Float32Array(c.B * c.Lq * c.Lk).map(() => (r() < 0.5 ? 1 : 0));
    if (c.Lq > 1) m.fill(0, c.Lk, 2 * c.Lk); // row 1 of batch 0 fully masked
    o.mask = m;
  }
  if (c.segments) {
    // contiguous windows of uneven sizes plus a stray id, like Qwen's window attention
    const s = new Int32Array(c.Lq);
    for (let i = 0; i < c.Lq; i++) s[i] = Math.floor(i / 5) + (i % 11 === 3 ? 100 : 0);
    o.segments = s;
  }
  if (c.queryMask) {
    const qm = new Float32Array(c.B * c.Lq).map(() => (r() < 0.75 ? 1 : 0));
    qm[0] = 0;
    o.queryMask = qm;
  }
  return o;
}

async function runCase(c: Case): Promise<void> {
  const g = await getGpu();
  const amp = c.amp ?? 1;
  const q = randn(c.B * c.Lq * c.H * c.Dh, c.seed, amp);
  const k = randn(c.B * c.Lk * c.Hkv * c.Dh, c.seed + 1, amp);
  const v = randn(c.B * c.Lk * c.Hkv * c.Dh, c.seed + 2);
  const o = makeMasks(c);
  const ts: Tensor[] = [];
  const up = (x: Float32Array | Int32Array, shape: number[], dt: 'f32' | 'i32' = 'f32') => {
    const t = g.upload(x, shape, dt);
    ts.push(t);
    return t;
  };
  const qt = up(q, [c.B, c.Lq, c.H, c.Dh]);
  const kt = up(k, [c.B, c.Lk, c.Hkv, c.Dh]);
  const vt = up(v, [c.B, c.Lk, c.Hkv, c.Dh]);
  const opts = {
    scale: c.scale,
    causal: c.causal,
    keyMask: o.keyMask ? up(o.keyMask as Float32Array, [c.B, c.Lk]) : undefined,
    mask: o.mask ? up(o.mask as Float32Array, [c.B, c.Lq, c.Lk]) : undefined,
    segments: o.segments ? up(o.segments as Int32Array, [c.Lq], 'i32') : undefined,
    queryMask: o.queryMask ? up(o.queryMask as Float32Array, [c.B, c.Lq]) : undefined,
  };
  poisonNext(g, [c.B, c.Lq, c.H, c.Dh]);
  const sgmat = planAttention(g, { Lq: c.Lq, Lk: c.Lk, Dh: c.Dh }).kind === 'subgroup-matrix' && g.maxBindingBytes > 1 << 20;
  const ran = g.fileCounts.get('attention-sgmat.wgsl') ?? 0;
  const out = attention(qt, kt, vt, opts);
  if (sgmat) expect(g.fileCounts.get('attention-sgmat.wgsl') ?? 0).toBe(ran + 1);
  const got = await g.readF32(out);
  out.dispose();
  const ref = attentionRef(q, k, v, c.B, c.Lq, c.Lk, c.H, c.Hkv, c.Dh, o);
  const delta = (c.scale ?? 1 / Math.sqrt(c.Dh)) * 2 ** -10 * c.Dh * amp * amp;
  if (sgmat) expectClose(`${name(c)} (subgroup-matrix, f16 bound)`, got, ref, (2 ** -10 + 2.2 * delta) + ATOL, 0);
  else expectClose(name(c), got, ref, ATOL, RTOL);
  // Rows the reference zeroes (queryMask 0 / no visible key) must be exactly 0 (no NaN, no garbage).
  for (let i = 0; i < ref.length; i++)
    if (ref[i] === 0 && got[i] !== 0) throw new Error(`${name(c)}: element ${i} should be exactly 0, got ${got[i]}`);
  for (const t of ts) t.dispose();
}

const CASES: Case[] = [
  // plain, every golden / real head dim, odd lengths
  { B: 1, Lq: 1, Lk: 1, H: 1, Hkv: 1, Dh: 16, seed: 1 },
  { B: 2, Lq: 3, Lk: 3, H: 2, Hkv: 2, Dh: 12, seed: 2 },
  { B: 1, Lq: 17, Lk: 17, H: 3, Hkv: 3, Dh: 24, seed: 3 },
  { B: 2, Lq: 70, Lk: 70, H: 2, Hkv: 2, Dh: 32, seed: 4 },
  { B: 1, Lq: 17, Lk: 70, H: 2, Hkv: 2, Dh: 48, seed: 5 },
  { B: 1, Lq: 70, Lk: 3, H: 2, Hkv: 2, Dh: 64, seed: 6 },
  { B: 1, Lq: 70, Lk: 70, H: 2, Hkv: 2, Dh: 80, seed: 7, amp: 2 },
  { B: 2, Lq: 17, Lk: 70, H: 2, Hkv: 2, Dh: 128, seed: 8, scale: 0.3 },
  // GQA 4:1 and 7:1 (Qwen text 28/4 = 7)
  { B: 2, Lq: 17, Lk: 17, H: 8, Hkv: 2, Dh: 16, seed: 9, causal: true },
  { B: 1, Lq: 70, Lk: 70, H: 7, Hkv: 1, Dh: 24, seed: 10, causal: true, keyMask: true, queryMask: true },
  // masks
  { B: 1, Lq: 70, Lk: 70, H: 2, Hkv: 2, Dh: 16, seed: 11, causal: true },
  { B: 1, Lq: 3, Lk: 17, H: 2, Hkv: 1, Dh: 16, seed: 12, causal: true },
  { B: 2, Lq: 17, Lk: 70, H: 2, Hkv: 2, Dh: 48, seed: 13, keyMask: true },
  { B: 2, Lq: 17, Lk: 70, H: 2, Hkv: 2, Dh: 64, seed: 14, mask: true },
  { B: 1, Lq: 70, Lk: 70, H: 2, Hkv: 2, Dh: 80, seed: 15, segments: true },
  { B: 2, Lq: 17, Lk: 17, H: 2, Hkv: 2, Dh: 128, seed: 16, queryMask: true, keyMask: true },
  // the VAE mid-block: one head of 512
  { B: 1, Lq: 70, Lk: 70, H: 1, Hkv: 1, Dh: 512, seed: 17 },
  // (mask flags are Dh-independent; keeping this one causal reuses the same pipeline: ~7 s less compile)
  { B: 2, Lq: 3, Lk: 17, H: 1, Hkv: 1, Dh: 512, seed: 18, causal: true },
];

describe('attention', () => {
  for (const c of CASES) test(name(c), () => runCase(c));

  test('variants fit 16 KiB of workgroup storage', () => {
    for (const dh of [12, 16, 24, 32, 48, 64, 80, 128, 256, 512, 1024]) {
      const v = attentionVariant(dh);
      const floats = v.SH + v.BQ * v.BK + v.BQ * v.TPR + 1;
      expect(floats * 4).toBeLessThanOrEqual(16384);
    }
  });

  test('split along query and key tokens under a small binding limit', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    try {
      // q rows 2*4*32*4 = 1 KiB: 6 KiB → 6 query rows, 12 key rows per chunk (misaligned views included)
      g.maxBindingBytes = 6 * 1024;
      await runCase({ B: 2, Lq: 17, Lk: 40, H: 4, Hkv: 2, Dh: 32, seed: 21 });
      await runCase({ B: 2, Lq: 17, Lk: 17, H: 4, Hkv: 2, Dh: 32, seed: 22, causal: true, keyMask: true, queryMask: true });
      await runCase({ B: 1, Lq: 13, Lk: 40, H: 4, Hkv: 4, Dh: 32, seed: 23, mask: true });
      await runCase({ B: 1, Lq: 17, Lk: 17, H: 4, Hkv: 1, Dh: 32, seed: 24, segments: true });
    } finally {
      g.maxBindingBytes = saved;
    }
  });

  test('argument errors name the shapes', async () => {
    const g = await getGpu();
    const q = g.upload(randn(2 * 3 * 4, 1), [1, 2, 3, 4]);
    const k = g.upload(randn(2 * 2 * 4, 2), [1, 2, 2, 4]);
    expect(() => attention(q, k, k)).toThrow(/kv heads 2 .* must divide query heads 3/);
    const k5 = g.upload(randn(2 * 3 * 5, 2), [1, 2, 3, 5]);
    expect(() => attention(q, k5, k5)).toThrow(/\[1,2,3,5\] does not match q \[1,2,3,4\]/);
    for (const t of [q, k, k5]) t.dispose();
  });
});

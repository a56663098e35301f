/**
 * Subgroup-matrix flash attention (shaders/attention-sgmat.wgsl) beyond the shared cases of
 * attention.test.ts (which run it on odd shapes whenever the device's plan picks it): forced variant on
 * the head dims of the models (64, 80, 128 and the tiny models' 16 / 24), every mask kind, GQA, and
 * each row-max reduction (shuffles / workgroup memory, 1, 2, 4 lanes per row) at 1, 3, 17, 255 rows/keys
 * and head dim 5 (scalar loads), scores growing along the keys (lazy rescale counted in word 3), and
 * q/k/v values beyond the f16 range (the workgroup recomputes in f32: result within the f32 tolerance,
 * no inf/NaN, overflow counter bumped). Needs chromium-experimental-subgroup-matrix (the trixie root,
 * scripts/sgmat-env.sh); elsewhere each test says so and returns, and the CI guard in .ci/run fails when
 * no subgroup-matrix dispatch happened in that run.
 */
import { getGpu, releaseGpu, randn, expectClose, rng } from './harness.js';
import { attentionRef } from './ref/attention.js';
import { planAttention, type AttentionForce } from '../src/ops/plan-attention.js';
import { attentionSgmat } from '../src/ops/attention-sgmat.js';
import { attention } from '../src/ops/attention.js';
import type { Tensor } from '../src/runtime/tensor.js';
import { overflowCounter } from '../src/ops/plan-gemm.js';
import { hasMatrixUnits } from '../src/runtime/caps.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(releaseGpu);

async function sgGpu(): Promise<Gpu | null> {
  const g = await getGpu();
  if (hasMatrixUnits(g.caps) && g.hasFeature('chromium-experimental-subgroup-matrix')) return g;
  console.log(`attention-sgmat: not run here: adapter "${g.caps.description}" has no subgroup-matrix feature in use (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
  return null;
}

/** split: through attention() with the binding limit lowered so that only one batch item fits a binding. */
interface C { force?: AttentionForce; ramp?: boolean; split?: boolean; B: number; L: number; Lk?: number; H: number; Hkv: number; Dh: number; causal?: boolean; keyMask?: boolean; segments?: boolean; queryMask?: boolean; inject?: number }

async function run(g: Gpu, c: C): Promise<void> {
  const Lk = c.Lk ?? c.L;
  const seed = c.L * 31 + c.Dh;
  const q = randn(c.B * c.L * c.H * c.Dh, seed);
  const k = randn(c.B * Lk * c.Hkv * c.Dh, seed + 1);
  const v = randn(c.B * Lk * c.Hkv * c.Dh, seed + 2);
  if (c.inject) {
    q[c.Dh + 1] = c.inject * 1e-3; // keeps the scores finite in f64 while k carries the outlier
    k[2 * c.Hkv * c.Dh + 3] = c.inject;
  }
  if (c.ramp) {
    // Scores that grow along the keys (by ~0.3 log2 units per key), so later KV tiles beat the running
    // max by more than TAU and O is rescaled; q and k on a 1/16 grid are exact in f16 (S carries no
    // rounding error, the f16 bound below stays valid at these magnitudes).
    for (let i = 0; i < q.length; i++) q[i] = Math.round((q[i] * 0.5 + 1) * 16) / 16;
    for (let i = 0; i < k.length; i++) {
      const j = Math.floor(i / (c.Hkv * c.Dh)) % Lk;
      k[i] = Math.round((k[i] * 0.5 + j * 0.05) * 16) / 16;
    }
  }
  const r = rng(seed);
  const km = c.keyMask ? new Float32Array(c.B * Lk).map(() => (r() < 0.7 ? 1 : 0)) : undefined;
  const seg = c.segments ? Int32Array.from({ length: c.L }, (_, i) => Math.floor(i / 7)) : undefined;
  const qm = c.queryMask ? new Float32Array(c.B * c.L).map(() => (r() < 0.8 ? 1 : 0)) : undefined;
  const up = (x: Float32Array | Int32Array, shape: number[], dt: 'f32' | 'i32' = 'f32') => g.upload(x, shape, dt);
  const ts = [up(q, [c.B, c.L, c.H, c.Dh]), up(k, [c.B, Lk, c.Hkv, c.Dh]), up(v, [c.B, Lk, c.Hkv, c.Dh])];
  const kmT = km && up(km, [c.B, Lk]), segT = seg && up(seg, [c.L], 'i32'), qmT = qm && up(qm, [c.B, c.L]);
  const out = g.empty([c.B, c.L, c.H, c.Dh]);
  g.writeInto(out, new Float32Array(out.numel).fill(NaN));
  const cnt0 = await g.read(overflowCounter(g));
  const before = cnt0[1];
  const plan = planAttention(g, { Lq: c.L, Lk, Dh: c.Dh }, 'subgroup-matrix', c.force);
  const scale = 1 / Math.sqrt(c.Dh);
  let got: Float32Array;
  if (c.split) {
    const saved = g.maxBindingBytes;
    const n0 = g.fileCounts.get('attention-sgmat.wgsl') ?? 0, r0 = g.fileCounts.get('attention.wgsl') ?? 0;
    g.maxBindingBytes = Math.max(c.L * c.H, Lk * c.Hkv) * c.Dh * 4 + 256;
    expect(c.B * c.L * c.H * c.Dh * 4).toBeGreaterThan(g.maxBindingBytes);
    let o2: Tensor | undefined;
    try {
      o2 = attention(ts[0], ts[1], ts[2], { scale, causal: c.causal, keyMask: kmT, segments: segT, queryMask: qmT, kernel: 'subgroup-matrix' });
      got = await g.readF32(o2);
    } finally {
      g.maxBindingBytes = saved;
      o2?.dispose();
    }
    expect(g.fileCounts.get('attention-sgmat.wgsl') ?? 0).toBe(n0 + c.B);
    expect(g.fileCounts.get('attention.wgsl') ?? 0).toBe(r0);
  } else {
    attentionSgmat(g, plan, { q: ts[0], k: ts[1], v: ts[2], out, B: c.B, Lq: c.L, Lk, H: c.H, Hkv: c.Hkv, scale, causal: !!c.causal, keyMask: kmT, segments: segT, queryMask: qmT });
    got = await g.readF32(out);
  }
  const ref = attentionRef(q, k, v, c.B, c.L, Lk, c.H, c.Hkv, c.Dh, { causal: c.causal, keyMask: km, segments: seg, queryMask: qm });
  const name = `sgmat attention [${plan.describe}] B=${c.B} L=${c.L} Lk=${Lk} H=${c.H}/${c.Hkv} Dh=${c.Dh}${c.causal ? ' causal' : ''}${c.keyMask ? ' keyMask' : ''}${c.segments ? ' segments' : ''}${c.queryMask ? ' queryMask' : ''}`;
  const cnt1 = await g.read(overflowCounter(g));
  const after = cnt1[1];
  if (c.ramp) expect(cnt1[3]).toBeGreaterThan(cnt0[3]);
  if (c.inject) {
    expect(after).toBeGreaterThan(before);
    expect(got.every(Number.isFinite)).toBe(true);
    expectClose(`${name} inject ${c.inject} (f32 recompute)`, got, ref, 2e-5, 1e-4);
  } else {
    expect(after).toBe(before);
    const delta = scale * 2 ** -10 * c.Dh;
    expectClose(`${name} (f16 bound)`, got, ref, 2 ** -10 + 2.2 * delta + 2e-5, 0);
  }
  for (let i = 0; i < ref.length; i++) if (ref[i] === 0 && got[i] !== 0) throw new Error(`${name}: element ${i} should be 0, got ${got[i]}`);
  for (const t of [...ts, kmT, segT, qmT, out]) t?.dispose();
}

const VARIANTS: AttentionForce[] = [{}, { reduce: 'subgroup', lanesPerRow: 4 }, { reduce: 'workgroup', lanesPerRow: 2 }, { reduce: 'workgroup', lanesPerRow: 1 }];

describe('subgroup-matrix flash attention', () => {
  test('default variant: rows/keys 1, 3, 17, 255, Dh 64 / 80 / 24 / 16 / 5, masks, lazy rescale, f32 recompute', async () => {
    const g = await sgGpu();
    if (!g) return;
    await run(g, { B: 1, L: 1, Lk: 255, H: 2, Hkv: 1, Dh: 64 });
    await run(g, { B: 1, L: 255, Lk: 3, H: 1, Hkv: 1, Dh: 80, causal: true });
    await run(g, { B: 2, L: 17, H: 2, Hkv: 2, Dh: 5, keyMask: true, queryMask: true });
    await run(g, { B: 1, L: 3, Lk: 17, H: 2, Hkv: 2, Dh: 24, causal: true });
    await run(g, { B: 1, L: 17, H: 2, Hkv: 2, Dh: 24, segments: true }); // segments need Lq = Lk
    await run(g, { B: 1, L: 20, Lk: 255, H: 1, Hkv: 1, Dh: 16, ramp: true });
    await run(g, { B: 1, L: 17, H: 1, Hkv: 1, Dh: 64, inject: 1e5 });
  });
  // Each head dim / mask set is its own pipeline (≈ seconds of lavapipe compile each), so the forced
  // reductions run three per variant: Dh 64 (vec4 loads), Dh 5 (scalar loads, padded) with the key and
  // query masks (a lane whose keys are all masked), Dh 16 with the scores growing along the keys (the
  // cross-lane max decides the lazy rescale); rows/keys still 1, 3, 17, 255. Dh 80 / 24, causal-only and
  // segments (applied to the scores before any reduction) run on the default variant above.
  test.each(VARIANTS.slice(1).map((f) => [JSON.stringify(f), f] as const))('variant %s: rows/keys 1, 3, 17, 255, Dh 64 / 16 / 5, masks, lazy rescale, f32 recompute', async (_n, force) => {
    const g = await sgGpu();
    if (!g) return;
    await run(g, { force, B: 1, L: 1, Lk: 255, H: 2, Hkv: 1, Dh: 64 });
    await run(g, { force, B: 1, L: 255, Lk: 3, H: 1, Hkv: 1, Dh: 64, causal: true });
    await run(g, { force, B: 2, L: 17, H: 2, Hkv: 2, Dh: 5, keyMask: true, queryMask: true });
    await run(g, { force, B: 1, L: 3, Lk: 17, H: 2, Hkv: 2, Dh: 16, causal: true });
    await run(g, { force, B: 1, L: 20, Lk: 255, H: 1, Hkv: 1, Dh: 16, ramp: true });
    await run(g, { force, B: 1, L: 17, H: 1, Hkv: 1, Dh: 64, inject: 1e5 });
  });
  test('model head dims 64 / 80 / 128 and tiny 16 / 24, odd lengths', async () => {
    const g = await sgGpu();
    if (!g) return;
    for (const [L, Dh] of [[1, 64], [17, 80], [33, 128], [3, 16], [70, 24]]) await run(g, { B: 1, L, H: 2, Hkv: 2, Dh });
  });
  test('masks: causal (Lq != Lk), key mask + query mask, vision window segments, GQA 7:1', async () => {
    const g = await sgGpu();
    if (!g) return;
    await run(g, { B: 2, L: 17, Lk: 40, H: 2, Hkv: 1, Dh: 64, causal: true });
    await run(g, { B: 2, L: 35, H: 2, Hkv: 2, Dh: 80, keyMask: true, queryMask: true });
    await run(g, { B: 1, L: 45, H: 2, Hkv: 2, Dh: 80, segments: true });
    await run(g, { B: 1, L: 19, H: 7, Hkv: 1, Dh: 128, causal: true, keyMask: true });
  });
  test('q over the binding limit: one batch item per dispatch, still on the matrix units (masks per item)', async () => {
    const g = await sgGpu();
    if (!g) return;
    await run(g, { split: true, B: 3, L: 17, Lk: 23, H: 2, Hkv: 1, Dh: 64, causal: true, keyMask: true, queryMask: true });
    await run(g, { split: true, B: 2, L: 33, H: 3, Hkv: 3, Dh: 80, segments: true });
  });
});

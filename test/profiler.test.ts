/** Profiler (src/runtime/profiler.ts) on the real device: GPU timestamps (lavapipe has them) and the CPU fallback. */
import { getGpu, releaseGpu, randn, expectClose, AFFINE_WGSL } from '../kernels-test/harness.js';
import { f32u, type Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';
import { defineShader } from '../src/runtime/shader-source.js';
import { formatTable } from '../src/runtime/profiler.js';

afterAll(releaseGpu);

// out[i] = a[i] * alpha + beta over n f32 values.
defineShader(
  'prof/affine.wgsl',
  AFFINE_WGSL,
);
// x[i] += 1 (a second key).
defineShader(
  'prof/inc.wgsl',
  `struct P { n: u32 }
@group(0) @binding(0) var<uniform> U: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) { if (gid.x < U.n) { x[gid.x] = x[gid.x] + 1.0; } }`,
);
// x[i] += 1 without uniforms (no uniform slot: only the profiler's query set limits a batch).
defineShader(
  'prof/inc-nou.wgsl',
  `@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) { if (gid.x < arrayLength(&x)) { x[gid.x] = x[gid.x] + 1.0; } }`,
);

function affine(g: Gpu, a: Tensor, out: Tensor, alpha: number, beta: number): void {
  g.dispatch({ file: 'prof/affine.wgsl', uniforms: [a.numel, f32u(alpha), f32u(beta)], bindings: [a, out], workgroups: [Math.ceil(a.numel / 64)] });
}

describe('profiler', () => {
  test('GPU timestamps per pipeline key, sorted by total time', async () => {
    const g = await getGpu();
    expect(g.hasFeature('timestamp-query')).toBe(true); // lavapipe has it; the fallback is tested below
    expect((await g.profileReport()).mode).toBe('off');
    g.enableProfiling();
    try {
      const n = 4096;
      const a = g.upload(randn(n, 5), [n]), o = g.empty([n]);
      for (let i = 0; i < 20; i++) affine(g, a, o, 1, 1);
      for (let i = 0; i < 5; i++) g.dispatch({ file: 'prof/inc.wgsl', uniforms: [n], bindings: [o], workgroups: [n / 64] });
      expectClose('result while profiling', await g.readF32(o), (await g.readF32(a)).map((v) => v + 6), 1e-5, 1e-6);
      const r = await g.profileReport();
      expect(r.mode).toBe('gpu-timestamps');
      const byKey = new Map(r.rows.map((x) => [x.key, x]));
      expect(byKey.get('prof/affine.wgsl:main')?.count).toBe(20);
      expect(byKey.get('prof/inc.wgsl:main')?.count).toBe(5);
      for (const row of r.rows) {
        expect(row.totalMs).toBeGreaterThanOrEqual(0);
        expect(row.meanUs).toBeCloseTo((row.totalMs * 1000) / row.count, 6);
      }
      expect(r.rows[0].totalMs).toBeGreaterThanOrEqual(r.rows[1].totalMs);
      expect(byKey.get('prof/affine.wgsl:main')!.totalMs).toBeGreaterThan(0);
      expect(r.text).toMatch(/^pipeline +count +total ms +mean µs\n/);
      expect(r.text).toContain('prof/affine.wgsl:main');
      const r2 = await g.profileReport({ reset: true });
      expect(r2.rows.length).toBe(2);
      expect((await g.profileReport()).rows.length).toBe(0);
      a.dispose();
      o.dispose();
    } finally {
      g.disableProfiling();
    }
    expect(g.profiling).toBe(false);
  });

  test('more timed dispatches than one query set holds (1024) flush on their own', async () => {
    const g = await getGpu();
    g.enableProfiling();
    try {
      const x = g.upload(new Float32Array(64), [64]);
      for (let i = 0; i < 1100; i++) g.dispatch({ file: 'prof/inc-nou.wgsl', bindings: [x], workgroups: [1] });
      expect((await g.readF32(x))[63]).toBe(1100);
      const r = await g.profileReport();
      expect(r.rows.find((row) => row.key === 'prof/inc-nou.wgsl:main')?.count).toBe(1100);
      x.dispose();
    } finally {
      g.disableProfiling();
    }
  });

  test('CPU fallback: wall time per flush, dispatch counts per key, with a note', async () => {
    const g = await getGpu();
    g.enableProfiling({ cpuOnly: true });
    try {
      const a = g.upload(new Float32Array(256), [256]), o = g.empty([256]);
      for (let i = 0; i < 3; i++) affine(g, a, o, 1, 1);
      await g.sync();
      const r = await g.profileReport();
      expect(r.mode).toBe('cpu-flush');
      expect(r.note).toMatch(/no 'timestamp-query'/);
      const flush = r.rows.find((row) => row.key.startsWith('(flush'));
      expect(flush!.count).toBeGreaterThanOrEqual(1);
      expect(flush!.totalMs).toBeGreaterThan(0);
      const aff = r.rows.find((row) => row.key === 'prof/affine.wgsl:main')!;
      expect(aff.count).toBe(3);
      expect(Number.isNaN(aff.totalMs)).toBe(true);
      expect(r.text).toMatch(/prof\/affine.wgsl:main +3 +- +-/);
      a.dispose();
      o.dispose();
    } finally {
      g.disableProfiling();
    }
  });
});

test('formatTable aligns columns, prints - for unmeasured times and sums the total', () => {
  const t = formatTable(
    [
      { key: 'gemm.wgsl:main:WT=bf16', count: 3, totalMs: 12.5, meanUs: 4166.667 },
      { key: 'x.wgsl:main', count: 10, totalMs: NaN, meanUs: NaN },
    ],
    'note',
  );
  expect(t.split('\n')).toEqual([
    'pipeline                count  total ms  mean µs',
    'gemm.wgsl:main:WT=bf16      3    12.500   4166.7',
    'x.wgsl:main                10         -        -',
    'total 12.500 ms; note',
  ]);
});

test('STEP1X_PROFILE=1 turns profiling on at Gpu.create', async () => {
  await getGpu(); // keep the shared runtime; this one is extra
  const { Gpu } = await import('../src/runtime/gpu.js');
  const saved = process.env.STEP1X_PROFILE;
  process.env.STEP1X_PROFILE = '1';
  const g2 = await Gpu.create();
  try {
    expect(g2.profiling).toBe(true);
    const x = g2.upload(new Float32Array(64), [64]);
    g2.dispatch({ file: 'prof/inc-nou.wgsl', bindings: [x], workgroups: [1] });
    expect((await g2.profileReport()).rows.map((r) => [r.key, r.count])).toEqual([['prof/inc-nou.wgsl:main', 1]]);
    x.dispose();
  } finally {
    g2.destroy(); // prints the table to stderr
    if (saved === undefined) delete process.env.STEP1X_PROFILE;
    else process.env.STEP1X_PROFILE = saved;
  }
});

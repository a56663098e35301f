/**
 * Runtime (src/runtime) on the real device (lavapipe in CI): tensor views and refcounts, misaligned
 * bindings, upload/readback of every dtype, batching, queue ordering, the buffer pool, binding limits,
 * GPU error surfacing, allocation failures and the profiler. Test kernels are registered in memory.
 */
import { getGpu, releaseGpu, randn, expectClose, AFFINE_WGSL } from '../kernels-test/harness.js';
import { f32u, Gpu } from '../src/runtime/gpu.js';
import { markDeviceLost } from '../src/runtime/device.js';
import type { Tensor } from '../src/runtime/tensor.js';
import { defineShader } from '../src/runtime/shader-source.js';
import { f32ArrayToBf16, f32ArrayToF16, bf16ArrayToF32, f16ArrayToF32 } from '../src/runtime/half.js';
import { ExitCode, Step1xError } from '../src/errors.js';

afterAll(releaseGpu);

// out[i] = a[i] * alpha + beta over n f32 values; 64 threads per workgroup, 1-D grid.
defineShader(
  'rt/affine.wgsl',
  AFFINE_WGSL,
);
// out[i + off] = a[i] * 2 (the output may overlap the input's storage when the input is a bound copy).
defineShader(
  'rt/double-at.wgsl',
  `struct P { n: u32, off: u32 }
@group(0) @binding(0) var<uniform> U: P;
@group(0) @binding(1) var<storage> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) { if (gid.x < U.n) { out[gid.x + U.off] = a[gid.x] * 2.0; } }`,
);
// Does not compile: an unknown type.
defineShader('rt/bad.wgsl', '@compute @workgroup_size(1) fn main() { let x: garbage = 1; }');

function affine(g: Gpu, a: Tensor, out: Tensor, alpha: number, beta: number): void {
  g.dispatch({ file: 'rt/affine.wgsl', uniforms: [a.numel, f32u(alpha), f32u(beta)], bindings: [a, out], workgroups: [Math.ceil(a.numel / 64)] });
}

async function expectStep1xError(p: Promise<unknown> | (() => unknown), code: number, re: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(Step1xError);
  if ((err as Step1xError).code !== code) throw new Error(`expected exit code ${code}, got ${(err as Step1xError).code}: ${(err as Error).message}`);
  expect((err as Error).message).toMatch(re);
}

describe('tensor views', () => {
  test('reshape/rows share storage with refcounts; the storage lives until the last view goes', async () => {
    const g = await getGpu();
    const live0 = g.pool.liveBytes;
    const x = randn(5 * 7, 1);
    const t = g.upload(x, [5, 7]);
    const r = t.rows(2, 3), f = t.reshape([-1]);
    expect(t.storage.refs).toBe(3);
    expect(r.shape).toEqual([3, 7]);
    expect(r.byteOffset).toBe(2 * 7 * 4);
    expect(f.shape).toEqual([35]);
    expect(() => t.reshape([6, 6])).toThrow(/cannot view \[5,7\] as \[6,6\]/);
    expect(() => t.rows(4, 2)).toThrow(/rows\(4, 2\) out of range for shape \[5,7\]/);
    t.dispose();
    t.dispose(); // idempotent
    expect(t.storage.refs).toBe(2);
    expectClose('rows view after parent dispose', await g.readF32(r), x.subarray(14, 35), 0);
    const rr = r.rows(1, 1); // a view of a view
    expectClose('view of view', await g.readF32(rr), x.subarray(21, 28), 0);
    for (const v of [r, f, rr]) v.dispose();
    expect(g.pool.liveBytes).toBe(live0);
  });

  test('use after dispose is a Step1xError naming the tensor', async () => {
    const g = await getGpu();
    const t = g.upload(new Float32Array(4), [4], 'f32', 'victim');
    const out = g.empty([4]);
    t.dispose();
    expect(t.isDisposed).toBe(true);
    for (const use of [() => t.reshape([2, 2]), () => t.rows(0, 1), () => g.writeInto(t, new Float32Array(4)), () => affine(g, t, out, 1, 0), () => g.copy(t)])
      await expectStep1xError(use, ExitCode.USAGE, /tensor victim used after dispose\(\)/);
    await expectStep1xError(g.read(t), ExitCode.USAGE, /victim used after dispose/);
    out.dispose();
  });

  test('bf16 rows must start on a word; odd-length half writes into a shared word are refused', async () => {
    const g = await getGpu();
    const bits = f32ArrayToBf16(randn(6, 2));
    const t = g.upload(bits, [6, 1], 'bf16');
    expect(() => t.rows(1, 2)).toThrow(/4-byte boundary/);
    const head = t.rows(0, 3); // 3 values end mid-word: the pad would clobber element 3
    expect(() => g.writeInto(head, new Uint16Array(3))).toThrow(/shares its last word/);
    const tail = t.rows(2, 4);
    g.writeInto(tail, new Uint16Array([1, 2, 3, 4]));
    expect(Array.from(new Uint16Array((await g.readBytes(t)).buffer, 0, 6))).toEqual([bits[0], bits[1], 1, 2, 3, 4]);
    expect(() => g.writeInto(head, new Uint16Array(4))).toThrow(/8 bytes do not fit/);
    for (const v of [t, head, tail]) v.dispose();
  });
});

describe('upload / readback', () => {
  for (const n of [1, 3, 17, 255]) {
    test(`every dtype round-trips, whole and as a view, n=${n}`, async () => {
      const g = await getGpu();
      const x = randn(n * 2, n, 100);
      const cases: [string, Float32Array | Int32Array | Uint32Array | Uint16Array, (t: Tensor) => Promise<ArrayLike<number>>, ArrayLike<number>][] = [];
      const i32 = Int32Array.from(x, (v) => Math.round(v * 1e6));
      const u32 = Uint32Array.from(x, (v) => Math.abs(Math.round(v * 4e7)));
      const bf = f32ArrayToBf16(x), hf = f32ArrayToF16(x);
      cases.push(['f32', x, (t) => g.read(t), x]);
      cases.push(['i32', i32, (t) => g.read(t), i32]);
      cases.push(['u32', u32, (t) => g.read(t), u32]);
      cases.push(['bf16', bf, (t) => g.read(t), bf16ArrayToF32(bf)]);
      cases.push(['f16', hf, (t) => g.read(t), f16ArrayToF32(hf)]);
      for (const [dtype, data, read, want] of cases) {
        // Shape [2, n]: the second row is a view at byte offset n * size (misaligned for small n).
        const t = g.upload(data, [2, n], dtype as never);
        const got = await read(t);
        expect(got.constructor).toBe(dtype === 'i32' ? Int32Array : dtype === 'u32' ? Uint32Array : Float32Array);
        expectClose(`${dtype} n=${n}`, got, want, 0);
        if (dtype === 'f32' || dtype === 'i32' || dtype === 'u32' || n % 2 === 0) {
          const v = t.rows(1, 1);
          expectClose(`${dtype} n=${n} row 1`, await read(v), Array.from(want).slice(n), 0);
          v.dispose();
        }
        if (dtype === 'bf16' || dtype === 'f16') {
          // Raw bits come back unchanged (no NaN canonicalisation, no rounding).
          const raw = new Uint16Array((await g.readBytes(t)).buffer, 0, 2 * n);
          expect(Array.from(raw)).toEqual(Array.from(data));
        }
        t.dispose();
      }
    });
  }

  test('odd-length bf16 / f16 tensors (1, 3, 17 values) upload padded and read back exactly', async () => {
    const g = await getGpu();
    for (const n of [1, 3, 17]) {
      for (const dt of ['bf16', 'f16'] as const) {
        const bits = dt === 'bf16' ? f32ArrayToBf16(randn(n, 7 + n)) : f32ArrayToF16(randn(n, 7 + n));
        const t = g.upload(bits, [n], dt);
        expect(t.byteLength).toBe(Math.ceil(n / 2) * 4);
        expect(Array.from(new Uint16Array((await g.readBytes(t)).buffer, 0, n))).toEqual(Array.from(bits));
        t.dispose();
      }
    }
  });

  test('upload validates length and array type', async () => {
    const g = await getGpu();
    expect(() => g.upload(new Float32Array(5), [2, 3])).toThrow(/5 values for shape \[2,3\]/);
    expect(() => g.upload(new Float32Array(4), [4], 'bf16')).toThrow(/Float32Array cannot hold bf16/);
  });
});

describe('dispatch', () => {
  test('misaligned read and read_write views are bound through copies (and written back)', async () => {
    const g = await getGpu();
    const n = 37;
    const x = randn(3 * n, 11);
    const src = g.upload(x, [3, n]);
    const dst = g.upload(new Float32Array(3 * n).fill(-7), [3, n]);
    const a = src.rows(1, 1), o = dst.rows(2, 1); // byte offsets 148 and 296: not multiples of 256
    expect(a.byteOffset % 256).not.toBe(0);
    expect(o.byteOffset % 256).not.toBe(0);
    const live = g.pool.liveBytes;
    affine(g, a, o, 2, 0.5);
    expect(g.pool.liveBytes).toBe(live); // the aligned copies are released
    const got = await g.readF32(dst);
    const want = new Float32Array(3 * n).fill(-7);
    for (let i = 0; i < n; i++) want[2 * n + i] = x[n + i] * 2 + 0.5;
    expectClose('misaligned out view (rows 0-1 untouched)', got, want, 1e-6, 1e-6);
    for (const t of [src, dst, a, o]) t.dispose();
  });

  test('a misaligned read-only view is not copied back over what the dispatch wrote', async () => {
    const g = await getGpu();
    const n = 65;
    const x = randn(2 * n, 12);
    const t = g.upload(x, [2, n]);
    const a = t.rows(1, 1); // byte offset 260: bound through a copy
    // out = the whole storage (aligned); the kernel writes 2*a into a's own region.
    g.dispatch({ file: 'rt/double-at.wgsl', uniforms: [n, n], bindings: [a, t], workgroups: [2] });
    const want = Float32Array.from(x, (v, i) => (i < n ? v : 2 * v));
    expectClose('in-place through a read-only copy', await g.readF32(t), want, 0);
    a.dispose();
    t.dispose();
  });

  test('600 dispatches recorded without a sync (past the 256 uniform slots of one batch) chain correctly', async () => {
    const g = await getGpu();
    const n = 100;
    const x = randn(n, 3, 100).map(Math.round); // integers: every sum below is exact in f32
    const buf = [g.upload(x, [n]), g.empty([n])];
    const before = g.dispatchCount;
    for (let i = 0; i < 600; i++) affine(g, buf[i % 2], buf[(i + 1) % 2], 1, i % 7); // distinct uniforms
    expect(g.dispatchCount - before).toBe(600);
    let add = 0;
    for (let i = 0; i < 600; i++) add += i % 7;
    expectClose('600 chained dispatches', await g.readF32(buf[0]), x.map((v) => v + add), 1e-3, 1e-6);
    // 300 dispatches with distinct uniforms into 256-byte rows of one output, read once.
    const out = g.empty([300, 64]);
    const src = g.upload(new Float32Array(64).fill(1), [64]);
    for (let i = 0; i < 300; i++) {
      const row = out.rows(i, 1);
      affine(g, src, row, i, -0.5);
      row.dispose();
    }
    const o = await g.readF32(out);
    for (let i = 0; i < 300; i++) if (o[i * 64] !== i - 0.5 || o[i * 64 + 63] !== i - 0.5) throw new Error(`row ${i}: ${o[i * 64]}`);
    for (const t of [...buf, out, src]) t.dispose();
  });

  test('writeInto / upload after unsubmitted dispatches do not change what those dispatches read', async () => {
    const g = await getGpu();
    const n = 50;
    const a = g.upload(new Float32Array(n).fill(1), [n]);
    const b = g.empty([n]);
    affine(g, a, b, 3, 0); // b = 3 (reads a = 1)
    g.writeInto(a, new Float32Array(n).fill(100)); // must be ordered after the recorded dispatch
    const c = g.empty([n]);
    affine(g, a, c, 1, 0); // c = 100
    a.dispose(); // a's buffer goes back to the pool while two recorded dispatches still read it ...
    const d = g.upload(new Float32Array(n).fill(-5), [n]); // ... and is handed out again here
    expect(d.storage.pooled).toBe(a.storage.pooled);
    expectClose('b', await g.readF32(b), new Float32Array(n).fill(3), 0);
    expectClose('c', await g.readF32(c), new Float32Array(n).fill(100), 0);
    expectClose('d', await g.readF32(d), new Float32Array(n).fill(-5), 0);
    for (const t of [b, c, d]) t.dispose();
  });

  test('maxBindingBytes override: a larger binding throws; the value is clamped to the device limit', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    try {
      g.maxBindingBytes = 1024;
      expect(g.maxBindingBytes).toBe(1024);
      const a = g.upload(new Float32Array(300), [300]), o = g.empty([300]);
      const count = g.dispatchCount;
      expect(() => affine(g, a, o, 1, 0)).toThrow(/binding 1 Tensor\(f32\[300\]\) is 1200 bytes, over the device's binding limit 1024/);
      expect(g.dispatchCount).toBe(count);
      g.maxBindingBytes = 1e15;
      expect(g.maxBindingBytes).toBe(g.device.limits.maxStorageBufferBindingSize);
      a.dispose();
      o.dispose();
    } finally {
      g.maxBindingBytes = saved;
    }
  });

  test('copyInto checks sizes and alignment', async () => {
    const g = await getGpu();
    const a = g.upload(new Float32Array([1, 2, 3]), [3]), b = g.upload(new Float32Array(4).fill(9), [4]);
    g.copyInto(a, b, 4);
    expect(Array.from(await g.readF32(b))).toEqual([9, 1, 2, 3]);
    expect(() => g.copyInto(a, b, 8)).toThrow(/does not fit Tensor\(f32\[4\]\)/);
    expect(() => g.copyInto(a, b, 2)).toThrow(/multiples of 4/);
    a.dispose();
    b.dispose();
  });

  test('a shader that does not compile surfaces as a Step1xError at the next sync, and the Gpu stays usable', async () => {
    const g = await getGpu();
    const t = g.empty([4]);
    g.dispatch({ file: 'rt/bad.wgsl', bindings: [], workgroups: [1] }); // records; no throw yet
    await expectStep1xError(g.sync(), ExitCode.GPU, /GPU error: .*unresolved type 'garbage'/s);
    await g.sync(); // the error is reported once, the broken batch was dropped
    g.dispatch({ file: 'rt/bad.wgsl', bindings: [], workgroups: [1] }); // cached invalid pipeline
    await expectStep1xError(g.read(t), ExitCode.GPU, /GPU error/);
    const x = g.upload(new Float32Array([1, 2]), [2]), y = g.empty([2]);
    affine(g, x, y, 2, 1);
    expect(Array.from(await g.readF32(y))).toEqual([3, 5]);
    for (const v of [t, x, y]) v.dispose();
  });

  test('a preprocessor error is thrown by dispatch itself', async () => {
    const g = await getGpu();
    defineShader('rt/pp-bad.wgsl', '#ifdef A\nfn main() {}');
    await expectStep1xError(() => g.dispatch({ file: 'rt/pp-bad.wgsl', bindings: [], workgroups: [1] }), ExitCode.GPU, /shaders\/rt\/pp-bad.wgsl:1: #if without #endif/);
  });
});

describe('device', () => {
  test('a lost device fails every later sync point; another runtime carries on', async () => {
    const g = await getGpu();
    const g2 = await Gpu.create();
    try {
      const t = g2.upload(new Float32Array(8), [8]);
      markDeviceLost(g2.handle, { reason: 'unknown', message: 'simulated reset' });
      await expectStep1xError(g2.sync(), ExitCode.GPU, /GPU device lost \(unknown\): simulated reset/);
      await expectStep1xError(g2.read(t), ExitCode.GPU, /device lost/); // sticky, not reported once
      expect(() => g2.flush()).toThrow(/device lost/);
    } finally {
      g2.destroy();
    }
    const t = g.upload(new Float32Array([1, 2]), [2]);
    expect(Array.from(await g.readF32(t))).toEqual([1, 2]);
    t.dispose();
  });
});

describe('buffer pool', () => {
  test('reuse by size bucket; live / peak / cached byte counters; trim', async () => {
    const g = await getGpu();
    await g.sync();
    g.pool.trim();
    const live0 = g.pool.liveBytes;
    g.pool.resetPeak();
    const a = g.empty([1000]); // 4000 bytes -> 4096 bucket
    expect(g.pool.liveBytes - live0).toBe(4096);
    const b = g.empty([300, 1000]); // 1.2 MB -> 2 MiB step bucket
    expect(g.pool.liveBytes - live0).toBe(4096 + (2 << 20));
    const pa = a.storage.pooled;
    a.dispose();
    expect(g.pool.cachedBytes).toBe(4096);
    const c = g.empty([1024]); // same bucket: same buffer
    expect(c.storage.pooled).toBe(pa);
    expect(g.pool.cachedBytes).toBe(0);
    b.dispose();
    c.dispose();
    expect(g.pool.liveBytes).toBe(live0);
    expect(g.pool.peakLiveBytes - live0).toBe(4096 + (2 << 20));
    g.pool.resetPeak();
    expect(g.pool.peakLiveBytes).toBe(live0);
    g.pool.trim();
    expect(g.pool.cachedBytes).toBe(0);
    const d = g.empty([1000]);
    expect(d.storage.pooled).not.toBe(pa);
    d.dispose();
  });

  test('allocChecked: allocates, maps over-size and driver out-of-memory to GPU_OOM with a --vram-budget hint', async () => {
    const g = await getGpu();
    const t = await g.allocChecked([17, 3], 'f32', 'checked');
    expect(t.shape).toEqual([17, 3]);
    t.dispose();
    const tooBig = Math.floor(g.device.limits.maxBufferSize / 4) + 1024;
    await expectStep1xError(g.allocChecked([tooBig], 'f32', 'huge'), ExitCode.GPU_OOM, /cannot allocate huge .*exceeds the device's maxBufferSize/);
    // Simulate the driver refusing a new buffer: the first scope popped (validation) is clean, the
    // out-of-memory scope reports an error. The real scopes are still popped, so none leaks.
    g.pool.trim();
    const live0 = g.pool.liveBytes;
    const dev = g.device as unknown as { popErrorScope: () => Promise<GPUError | null> };
    const own = Object.getOwnPropertyDescriptor(dev, 'popErrorScope');
    const real = dev.popErrorScope.bind(g.device);
    let calls = 0;
    dev.popErrorScope = async () => {
      await real();
      return ++calls === 2 ? ({ message: 'Out of memory (simulated)\nmore' } as GPUError) : null;
    };
    try {
      await expectStep1xError(g.allocChecked([1 << 20], 'f32', 'big'), ExitCode.GPU_OOM, /out of GPU memory allocating big \[1048576\] f32 \(4\.0 MiB\): Out of memory \(simulated\)\. Lower --vram-budget/);
    } finally {
      if (own) Object.defineProperty(dev, 'popErrorScope', own);
      else delete (dev as { popErrorScope?: unknown }).popErrorScope;
    }
    expect(calls).toBe(2);
    expect(g.pool.liveBytes).toBe(live0);
    expect(g.pool.cachedBytes).toBe(0); // the failed buffer is destroyed, not cached
    await g.sync();
  });
});

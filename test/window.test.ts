/**
 * Binding windows (runtime/window.ts) at the alignments the dry-run profiles carry (16 lavapipe / Apple,
 * 32 NVIDIA, 256 Intel Xe2), with 2- and 4-byte elements, odd element ranges and views that start off the
 * alignment; the arithmetic needs no GPU. One lavapipe check: a conv split into windows at the device's
 * own alignment equals the unsplit conv bitwise.
 */
import { windowSpan, bindWindow, windowElems } from '../src/runtime/window.js';
import { Storage, Tensor, DTYPE_BYTES, type DType } from '../src/runtime/tensor.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { PooledBuffer } from '../src/runtime/buffer-pool.js';
import { conv2d } from '../src/ops/conv.js';
import { getGpu, releaseGpu, randn, withBindingLimit, rng } from '../kernels-test/harness.js';

const ALIGNS = [16, 32, 256];
const DTYPES: DType[] = ['f32', 'f16', 'bf16'];

describe('windowSpan', () => {
  test('worked cases: slop below e0, the view start as a floor, the bytes rounded to a word', () => {
    // f16 at byte 34 of an aligned view: 32-byte alignment starts at element 16, e0 is 1 in
    expect(windowSpan(0, 'f16', 17, 3, 32)).toEqual({ start: 16, off: 1, bytes: 8 });
    // the same range at 256: from element 0 (bytes 0..40)
    expect(windowSpan(0, 'f16', 17, 3, 256)).toEqual({ start: 0, off: 17, bytes: 40 });
    // f32 at 16: element 255 is byte 1020, 12 past 1008 (element 252)
    expect(windowSpan(0, 'f32', 255, 1, 16)).toEqual({ start: 252, off: 3, bytes: 16 });
    // a view starting at byte 4: never below the view (its own start is misaligned: the runtime copies it)
    expect(windowSpan(4, 'bf16', 1, 1, 16)).toEqual({ start: 0, off: 1, bytes: 4 });
    // ... but from an aligned byte inside it: 4 + 2·7 = 18, 16 is element 6
    expect(windowSpan(4, 'bf16', 7, 1, 16)).toEqual({ start: 6, off: 1, bytes: 4 });
  });

  test.each(ALIGNS)('random ranges at alignment %i: aligned start, the nearest one at or below e0, within the view', (align) => {
    const r = rng(align);
    let checked = 0;
    for (let i = 0; i < 1000; i++) {
      const dtype = DTYPES[i % 3], eb = DTYPE_BYTES[dtype];
      const byteOffset = 4 * Math.floor(r() * 200); // views start on words, often off the alignment
      const e0 = Math.floor(r() * 1000), count = 1 + Math.floor(r() * 300);
      const { start, off, bytes } = windowSpan(byteOffset, dtype, e0, count, align);
      const startByte = byteOffset + start * eb;
      expect(start).toBeGreaterThanOrEqual(0);
      expect(off).toBe(e0 - start);
      expect(bytes).toBe(Math.ceil(((off + count) * eb) / 4) * 4);
      if (start > 0) {
        expect(startByte % align).toBe(0);
        expect(off * eb).toBeLessThan(align); // no aligned byte nearer e0
        checked++;
      } else expect(Math.floor(((byteOffset + e0 * eb) % align) / eb)).toBeGreaterThanOrEqual(e0); // clamped: no aligned byte inside the view below e0
      expect(bytes).toBeLessThanOrEqual(count * eb + align + 3); // what windowElems leaves room for
    }
    expect(checked).toBeGreaterThan(300);
  });
});

describe('bindWindow (a fake device: no GPU work)', () => {
  const fakeGpu = (align: number) => ({ storageAlign: align, maxBindingBytes: 4096, scopes: undefined }) as unknown as Gpu;

  test.each(ALIGNS)('alignment %i: the view binds the window, element e0 at off', (align) => {
    const st = new Storage(fakeGpu(align), { size: 1 << 16 } as PooledBuffer);
    const base = new Tensor(st, [4000], 'f16', 4 * 37);
    const { view, off } = bindWindow(base, 1001, 255);
    expect(view.byteOffset % align).toBe(0);
    expect(view.byteOffset + off * 2).toBe(base.byteOffset + 1001 * 2);
    expect(view.shape).toEqual([off + 255]);
    expect(st.refs).toBe(2); // the window holds the storage
    view.dispose();
    expect(() => bindWindow(base, 3900, 101)).toThrow(/out of range/);
    expect(windowElems(base, 4)).toBe(Math.floor((4096 - align) / 4));
  });
});

describe('on the device (lavapipe)', () => {
  afterAll(() => releaseGpu());

  test('conv2d split into windows at the device alignment equals the unsplit conv bitwise', async () => {
    const g = await getGpu();
    expect(g.storageAlign).toBe(g.device.limits.minStorageBufferOffsetAlignment);
    // 17x17 planes (1156 bytes: windows start off the plane boundaries at 16 / 32 / 256), odd channels
    const [B, C, H, W, O] = [2, 5, 17, 17, 7];
    const x = g.upload(randn(B * C * H * W, 1), [B, C, H, W]);
    const w = g.upload(randn(O * C * 9, 2, 0.3), [O, C, 3, 3]);
    const b = g.upload(randn(O, 3), [O]);
    const run = () => conv2d(x, w, b, { pad: [1, 1, 1, 1], variant: 'direct' });
    const whole = await g.readF32(run());
    // 3 planes of x per binding: channel blocks of 2 and output blocks of 3
    const split = await withBindingLimit(g, 3 * H * W * 4 + g.storageAlign, async () => g.readF32(run()));
    expect(Array.from(split)).toEqual(Array.from(whole));
  });
});

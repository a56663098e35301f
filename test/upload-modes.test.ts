/**
 * The two ways streamed loads reach GPU buffers (runtime/upload-ring.ts: 'ring' = mapped staging slots,
 * 'write' = queue.writeBuffer from reused host buffers) give the same bytes, bit for bit:
 *   - the Uploader alone, with 64-byte pieces and 2 slots (so that every length spans several pieces and the
 *     ring wraps), lengths 1, 3, 17, 255, 1000 at word offsets, fills that resolve later than they are
 *     asked for, and host-byte writes; each read back against the source with its zero pad;
 *   - the load path end to end (nn/upload.ts, nn/weight.ts, io/checkpoint.ts tensorReader) on two devices,
 *     one per mode, over odd shapes: bf16 [5, 7] as stored, widened to f32, i32 [17], f32 [3], a joined view
 *     (q/k/v rows → qkv, read whole then copied), bf16 [255, 64] packed to q8 / q4 on the GPU and on the host,
 *     each against the bytes as stored or the whole-matrix quantizeBlocks.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rng } from '../kernels-test/harness.js';
import { Gpu } from '../src/runtime/gpu.js';
import { Uploader, type UploadMode } from '../src/runtime/upload-ring.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { quantizeBlocks } from '../src/io/quant.js';
import { bf16ArrayToF32 } from '../src/runtime/half.js';
import { loadWeight } from '../src/nn/weights.js';
import { loadLinearWeight, withWeightPolicy } from '../src/nn/weight.js';

const MODES: UploadMode[] = ['ring', 'write'];
let dir = '';
const gpus: Partial<Record<UploadMode, Gpu>> = {};
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-upload-'));
  for (const m of MODES) gpus[m] = await Gpu.create({ upload: m });
});
afterAll(() => {
  for (const m of MODES) gpus[m]?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

function bytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return new Uint8Array(n).map(() => Math.floor(r() * 256));
}
/** Random finite bf16 bits around ±1. */
function bf16Bits(n: number, seed: number): Uint16Array {
  const r = rng(seed);
  return new Uint16Array(n).map(() => (r() < 0.5 ? 0x8000 : 0) | ((119 + Math.floor(r() * 16)) << 7) | Math.floor(r() * 128));
}
function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  return a.findIndex((v, i) => v !== b[i]);
}

describe.each(MODES)('Uploader, %s mode', (mode) => {
  test('pieces of 64 bytes over 2 slots: lengths 1..1000 at word offsets, async and host-byte fills', async () => {
    const g = gpus[mode]!;
    const up = new Uploader(g.device, mode, 64, 2);
    const dst = g.empty([2048], 'u32', 'dst'); // 8 KiB, filled with 0xee first so that pads show
    g.writeBytes(dst, 0, new Uint8Array(8192).fill(0xee));
    const want = new Uint8Array(8192).fill(0xee);
    let off = 0, seed = 1;
    try {
      for (const n of [1, 3, 17, 255, 1000]) {
        for (const how of ['fill', 'bytes'] as const) {
          const src = bytes(n, seed++);
          const before = () => undefined;
          if (how === 'bytes') await up.write(dst.storage.pooled.buffer, off, src, before);
          else
            await up.stream(dst.storage.pooled.buffer, off, n, async (v, at) => {
              await new Promise((r) => setTimeout(r, 1)); // a read that completes later
              v.set(src.subarray(at, at + v.length));
            }, before);
          want.set(src, off);
          want.fill(0, off + n, off + Math.ceil(n / 4) * 4); // the zero pad of an odd tail
          off += Math.ceil(n / 4) * 4 + 4;
        }
      }
      const got = await g.readBytes(dst);
      const d = firstDiff(got, want);
      if (d >= 0) throw new Error(`${mode}: byte ${d} is ${got[d]}, expected ${want[d]}`);
      expect(up.writes).toBeGreaterThan(10 * 2); // several pieces per write
    } finally {
      dst.dispose();
      up.destroy();
    }
  });
});

describe('streamed loads are bit-identical in both modes', () => {
  const N = 255, K = 64;
  const w = bf16Bits(N * K, 7);
  const small = bf16Bits(35, 8);
  const ints = new Int32Array(17).map((_, i) => i * 977 - 5000);
  const f32 = new Float32Array([1.5, -2.25, 3e-8]);
  const q = bf16Bits(3 * 6, 9), k = bf16Bits(5 * 6, 10), v = bf16Bits(1 * 6, 11);
  let path = '';
  beforeAll(async () => {
    path = join(dir, 'odd.safetensors');
    await writeSafetensors(path, {
      'lin.weight': { dtype: 'BF16', shape: [N, K], data: w },
      small: { dtype: 'BF16', shape: [5, 7], data: small },
      ints: { dtype: 'I32', shape: [17], data: ints },
      f32: { dtype: 'F32', shape: [3], data: f32 },
      q: { dtype: 'BF16', shape: [3, 6], data: q },
      k: { dtype: 'BF16', shape: [5, 6], data: k },
      v: { dtype: 'BF16', shape: [1, 6], data: v },
    });
  });
  const u8 = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

  test.each(MODES)('plain tensors, widened, joined view (%s)', async (mode) => {
    const g = gpus[mode]!;
    const ck = await Checkpoint.open(path);
    const view = Checkpoint.view(ck, new Map([['qkv', { parts: ['q', 'k', 'v'] }], ['small', { parts: ['small'] }]]));
    try {
      const qkv = new Uint16Array([...q, ...k, ...v]);
      const cases: [string, Promise<import('../src/runtime/tensor.js').Tensor>, Uint8Array][] = [
        ['small', loadWeight(g, ck, 'small'), u8(small)],
        ['small as f32', loadWeight(g, ck, 'small', { as: 'f32' }), u8(bf16ArrayToF32(small))],
        ['ints', loadWeight(g, ck, 'ints'), u8(ints)],
        ['f32', loadWeight(g, ck, 'f32'), u8(f32)],
        ['qkv (joined view)', loadWeight(g, view, 'qkv'), u8(qkv)],
        ['small (whole view)', loadWeight(g, view, 'small'), u8(small)],
      ];
      for (const [what, p, want] of cases) {
        const t = await p;
        const got = (await g.readBytes(t)).subarray(0, want.length);
        t.dispose();
        const d = firstDiff(got, want);
        if (d >= 0) throw new Error(`${mode} ${what}: byte ${d} is ${got[d]}, expected ${want[d]}`);
      }
    } finally {
      await view.close();
    }
  });

  test.each([
    ['ring', 'q8', 'gpu'],
    ['write', 'q8', 'gpu'],
    ['ring', 'q4', 'gpu'],
    ['write', 'q4', 'gpu'],
    ['ring', 'q8', 'host'],
    ['write', 'q4', 'host'],
  ] as const)('[255, 64] bf16 → %s mode, %s packed on the %s', async (mode, fmt, pack) => {
    const g = gpus[mode]!;
    const ck = withWeightPolicy(await Checkpoint.open(path), { weights: fmt, pack });
    try {
      const wt = await loadLinearWeight(g, ck, 'lin.weight');
      const data = await g.readBytes(wt.data);
      const scales = await g.readBytes(wt.scales!);
      wt.dispose();
      const want = quantizeBlocks(bf16ArrayToF32(w), N, K, fmt);
      const d = firstDiff(data, want.data);
      if (d >= 0) throw new Error(`${mode} ${fmt} ${pack}: code byte ${d} is ${data[d]}, expected ${want.data[d]}`);
      const s = firstDiff(scales.subarray(0, want.scales.byteLength), u8(want.scales));
      if (s >= 0) throw new Error(`${mode} ${fmt} ${pack}: scale byte ${s} differs`);
    } finally {
      await ck.close();
    }
  });
});

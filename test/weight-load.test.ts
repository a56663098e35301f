/**
 * Streamed weight loading (io/safetensors.ts readChunks, nn/upload.ts, nn/weights.ts, nn/weight.ts): the
 * chunked reader's edges (empty, exact multiple, ragged end, abandoned early), the chunked bf16 → q8 / q4
 * quantizer bit for bit against quantizeBlocks on random and special blocks (NaN, ±Inf, zeros, scales that
 * underflow or overflow f16) at odd shapes, and every streamed load path read back from the GPU, byte for
 * byte, against the whole-tensor reference (the bytes as stored, quantizeBlocks / bf16ToE4m3Codes of the
 * whole matrix), with tensors of several chunks, odd row counts and special blocks: q8 / q4 both packed on
 * the GPU (shaders/pack-quant.wgsl) and on the host.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu, rng } from '../kernels-test/harness.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { bf16ToE4m3Codes, quantizeBf16Into, quantizeBlocks, QBLOCK } from '../src/io/quant.js';
import { bf16ArrayToF32, f16ArrayToF32 } from '../src/runtime/half.js';
import { loadWeight } from '../src/nn/weights.js';
import { loadLinearWeight, withWeightPolicy, type WeightsOption } from '../src/nn/weight.js';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-wload-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  releaseGpu();
});

/** Random finite bf16 bits around ±1 (exponents 2^-8 .. 2^7). */
function bf16Bits(n: number, seed: number): Uint16Array {
  const r = rng(seed);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() < 0.5 ? 0x8000 : 0) | ((119 + Math.floor(r() * 16)) << 7) | Math.floor(r() * 128);
  return out;
}

describe('readChunks', () => {
  test('chunks cover the range in order at every edge; an abandoned stream leaves the file usable', async () => {
    const bytes = new Uint8Array(1000).map((_, i) => (i * 7 + 3) & 255);
    const p = join(dir, 'chunks.safetensors');
    await writeSafetensors(p, { a: { dtype: 'U8', shape: [1000], data: bytes } });
    const f = await SafetensorsFile.open(p);
    const t = f.info('a');
    for (const [len, chunk] of [[0, 64], [1000, 100], [1000, 333], [999, 1000], [1000, 4096]]) {
      const got: number[] = [];
      const sizes: number[] = [];
      for await (const c of f.readChunks(t.begin, len, chunk)) {
        sizes.push(c.byteLength);
        got.push(...c);
      }
      expect(got).toEqual([...bytes.subarray(0, len)]);
      expect(sizes.length).toBe(Math.ceil(len / chunk));
    }
    for await (const c of f.readChunks(t.begin, 1000, 100)) {
      expect(c[0]).toBe(bytes[0]);
      break; // the read of the second chunk is in flight here: the generator must wait for it
    }
    expect([...(await f.readBytes('a'))]).toEqual([...bytes]);
    await f.close();
    await expect(f.readChunks(t.begin, 10).next()).rejects.toThrow(/read after close/);
  });
});

describe('quantizeBf16Into', () => {
  test.each([
    ['q8', 5, 96],
    ['q4', 5, 96],
    ['q8', 16, 64],
    ['q4', 3, 32],
  ] as const)('%s [%i, %i] equals quantizeBlocks bit for bit, special blocks included', (fmt, N, K) => {
    const bits = bf16Bits(N * K, N * K);
    const nb = K / QBLOCK;
    // Special blocks: NaN, +Inf, -Inf, all zero (incl. -0), tiny (scale underflows f16), huge (scale overflows f16).
    const special: ((b: number) => void)[] = [
      (b) => (bits[b + 3] = 0x7fc0),
      (b) => (bits[b + 1] = 0x7f80),
      (b) => (bits[b + 30] = 0xff80),
      (b) => bits.fill(0, b, b + QBLOCK).fill(0x8000, b + 4, b + 6),
      (b) => { for (let i = 0; i < QBLOCK; i++) bits[b + i] = (bits[b + i] & 0x807f) | (3 << 7); },
      (b) => { bits[b + 7] = 0x7f00; bits[b + 8] = 0xff7f; },
      (b) => (bits[b + 9] = 0x477f), // 65280: amax/qmax still finite in f16
    ];
    special.forEach((f, i) => { if (i < N * nb) f(((i * 5) % (N * nb)) * QBLOCK); });
    const want = quantizeBlocks(bf16ArrayToF32(bits), N, K, fmt);
    const data = new Uint8Array(want.data.length).fill(0xa5); // dirty reused buffers
    const scales = new Uint16Array(want.scales.length).fill(0x1234);
    quantizeBf16Into(bits, N, K, fmt, data, scales, new Float32Array(N * K + 7));
    expect([...scales]).toEqual([...want.scales]);
    const diff = data.findIndex((v, i) => v !== want.data[i]);
    if (diff >= 0) throw new Error(`${fmt} code byte ${diff}: ${data[diff]} vs ${want.data[diff]}`);
  });
});

describe('streamed loads read back exactly', () => {
  // 1101 x 4128 bf16 = 9.1 MB: three 4 MiB chunks as stored; q8/q4 rows per chunk 508 (even), last 85 (odd);
  // K / QBLOCK = 129 is odd, so only even row counts keep the scales' chunks in whole words.
  const N = 1101, K = 4128;
  const big = bf16Bits(N * K, 7);
  // Special blocks across both chunks (NaN, ±Inf, all zero with -0, a scale that underflows f16, one that
  // overflows it, subnormal weights), and a block whose max sits in its last element.
  for (const [i, f] of [
    [0, (b: number) => (big[b + 5] = 0x7fc1)],
    [3, (b: number) => (big[b + 31] = 0x7f80)],
    [7, (b: number) => (big[b] = 0xff80)],
    [1000, (b: number) => big.fill(0, b, b + QBLOCK).fill(0x8000, b + 2, b + 3)],
    [140000, (b: number) => { for (let k = 0; k < QBLOCK; k++) big[b + k] = (big[b + k] & 0x807f) | (2 << 7); }],
    [140001, (b: number) => { for (let k = 0; k < QBLOCK; k++) big[b + k] &= 0x807f; }],
    [141000, (b: number) => (big[b + 9] = 0x7f7f)],
    [141001, (b: number) => (big[b + 31] = 0x4300)],
  ] as [number, (b: number) => void][])
    f(i * QBLOCK);
  let ckptPath = '';
  beforeAll(async () => {
    const r = rng(3);
    const f32 = Float32Array.from({ length: 1031 }, () => r() - 0.5);
    const tensors: Record<string, WriteTensor> = {
      'lin.weight': { dtype: 'BF16', shape: [N, K], data: big },
      'lin.bias': { dtype: 'BF16', shape: [5], data: bf16Bits(5, 9) }, // odd count: the last word is padded
      'small.weight': { dtype: 'F16', shape: [3, 64], data: new Uint16Array(192).map((_, i) => 0x3c00 + i) },
      'norm.scale': { dtype: 'F32', shape: [1031], data: f32 },
      'ids': { dtype: 'I32', shape: [7], data: Int32Array.from([1, -2, 3, 4, 5, 6, 2 ** 30]) },
    };
    ckptPath = join(dir, 'load.safetensors');
    await writeSafetensors(ckptPath, tensors);
  });

  test('plain tensors as stored and widened to f32', async () => {
    const g = await getGpu();
    const ck = await Checkpoint.open(ckptPath);
    try {
      for (const [name, as] of [['lin.weight', 'native'], ['lin.bias', 'native'], ['small.weight', 'native'], ['norm.scale', 'native'], ['ids', 'native'], ['lin.bias', 'f32'], ['small.weight', 'f32']] as const) {
        const info = ck.info(name);
        const t = await loadWeight(g, ck, name, { as });
        const raw = await ck.readBytes(name);
        const got = await g.readBytes(t);
        t.dispose();
        let want: Uint8Array = raw;
        if (as === 'f32' && info.dtype === 'BF16') want = new Uint8Array(bf16ArrayToF32(new Uint16Array(raw.buffer, 0, raw.length / 2)).buffer);
        if (as === 'f32' && info.dtype === 'F16') want = new Uint8Array(f16ArrayToF32(new Uint16Array(raw.buffer, 0, raw.length / 2)).buffer);
        expect(got.length).toBeGreaterThanOrEqual(want.length);
        const d = want.findIndex((v, i) => v !== got[i]);
        if (d >= 0) throw new Error(`${name} (${as}): byte ${d} is ${got[d]}, expected ${want[d]}`);
      }
    } finally {
      await ck.close();
    }
  }, 120_000);

  test.each([
    ['bf16', 'host'],
    ['q8', 'GPU'],
    ['q4', 'GPU'],
    ['q8', 'host'],
    ['q4', 'host'],
    ['fp8', 'host'],
  ] as [WeightsOption, string][])('Linear weight under --weights %s, packed on the %s', async (opt, where) => {
    const g = await getGpu();
    const ck = withWeightPolicy(await Checkpoint.open(ckptPath), { weights: opt, pack: where === 'GPU' ? 'gpu' : 'host' });
    try {
      const w = await loadLinearWeight(g, ck, 'lin.weight');
      const data = await g.readBytes(w.data);
      const scales = w.scales ? await g.readBytes(w.scales) : undefined;
      w.dispose();
      let wantData: Uint8Array, wantScales: Uint16Array | undefined;
      if (opt === 'bf16') wantData = new Uint8Array(big.buffer);
      else if (opt === 'fp8') wantData = bf16ToE4m3Codes(big);
      else ({ data: wantData, scales: wantScales } = quantizeBlocks(bf16ArrayToF32(big), N, K, opt));
      expect(w.format).toBe(opt === 'fp8' ? 'fp8_e4m3' : opt);
      expect(data.length).toBe(wantData.length);
      const d = wantData.findIndex((v, i) => v !== data[i]);
      if (d >= 0) throw new Error(`${opt}: data byte ${d} (row ${Math.floor(d / (data.length / N))}) is ${data[d]}, expected ${wantData[d]}`);
      if (wantScales) {
        const s = new Uint16Array(scales!.buffer, 0, wantScales.length);
        const e = wantScales.findIndex((v, i) => v !== s[i]);
        if (e >= 0) throw new Error(`${opt}: scale ${e} is ${s[e]}, expected ${wantScales[e]}`);
      } else expect(scales).toBeUndefined();
    } finally {
      await ck.close();
    }
  }, 300_000);
});

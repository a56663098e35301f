/**
 * shaders/pack-quant.wgsl (ops/pack-quant.ts) bit for bit against quantizeBlocks, its plain-TS reference,
 * over every block max: one block per max |bits| m (all 32768, Inf and NaN included), its other 31 weights
 * random below m with random signs; and blocks of exact ties (|w| = (k + 1/2)·s, both signs), where
 * round-half-up decides. The kernel proposes each code from an f32 quotient and settles it with exact
 * products; lavapipe divides exactly, so the same cases also run with the quotient skewed by ±2^-10 (a
 * GPU's division may be inexact), which the correction must undo.
 */
import { getGpu, releaseGpu, rng } from '../kernels-test/harness.js';
import { packQuantChunk } from '../src/ops/pack-quant.js';
import { quantizeBlocks, quantScaleTable } from '../src/io/quant.js';
import { bf16ArrayToF32, f16ArrayToF32 } from '../src/runtime/half.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(() => releaseGpu());

/** bf16 bits of 32768 blocks: block m holds max |bits| m once, the rest random below it. */
function everyMax(seed: number): Uint16Array {
  const r = rng(seed);
  const bits = new Uint16Array(32768 * 32);
  for (let m = 0; m < 32768; m++) {
    const at = Math.floor(r() * 32);
    for (let i = 0; i < 32; i++) {
      // in Inf / NaN blocks the others stay finite (a NaN among them would be the max)
      const below = (m & 0x7f80) === 0x7f80 ? Math.floor(r() * 0x7f80) : Math.floor(r() * (m + 1));
      bits[m * 32 + i] = (i === at ? m : below) | (r() < 0.5 ? 0x8000 : 0);
    }
  }
  return bits;
}

/** Blocks whose weights are exact ties (k + 1/2)·s of their own scale s, where bf16 holds them. */
function ties(format: 'q8' | 'q4'): Uint16Array {
  const qmax = format === 'q8' ? 127 : 7;
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  const bf = (v: number) => ((f[0] = v), u[0] >>> 16);
  const out: number[] = [];
  for (let e = -20; e < 10; e++)
    for (let mm = 0; mm < 128; mm += 3) {
      const max = bf16ArrayToF32(new Uint16Array([bf((1 + mm / 128) * 2 ** e)]))[0];
      const one = new Float32Array(32);
      one[0] = max;
      const s = f16ArrayToF32(quantizeBlocks(one, 1, 32, format).scales)[0];
      const blk = [bf(max)];
      for (let i = 1; i < 32; i++) {
        const k = (i * 7 + mm) % qmax;
        const w = (i % 2 ? -1 : 1) * (k + 0.5) * s;
        const b = bf(w);
        blk.push(bf16ArrayToF32(new Uint16Array([b]))[0] === w ? b : bf(k * s)); // exact in bf16, else a plain value
      }
      out.push(...blk);
    }
  if ((out.length / 32) % 2) out.push(...new Array(32).fill(0));
  return new Uint16Array(out);
}

async function packOnGpu(g: Gpu, bits: Uint16Array, scaleTable: Uint32Array, format: 'q8' | 'q4', skew?: number): Promise<{ codes: Uint8Array; scales: Uint16Array }> {
  const blocks = bits.length / 32;
  const x = g.upload(new Uint32Array(bits.buffer, bits.byteOffset, bits.length / 2), [bits.length / 2], 'u32');
  const table = g.upload(scaleTable, [1 << 15], 'u32');
  const codes = g.empty([(blocks * (format === 'q8' ? 32 : 16)) / 4], 'u32');
  const scales = g.empty([blocks / 2], 'u32');
  packQuantChunk(x, table, codes, scales, format, 0, blocks, skew);
  const c = new Uint8Array((await g.read(codes)).buffer);
  const s = new Uint16Array((await g.read(scales)).buffer);
  for (const t of [x, table, codes, scales]) t.dispose();
  return { codes: c, scales: s };
}

test.each(['q8', 'q4'] as const)('pack-quant %s: every block max and exact ties bit-identical to quantizeBlocks, also with the quotient skewed', async (format) => {
  const g = await getGpu();
  const a = everyMax(format === 'q8' ? 11 : 12), b = ties(format);
  const bits = new Uint16Array(a.length + b.length);
  bits.set(a);
  bits.set(b, a.length);
  const ref = quantizeBlocks(bf16ArrayToF32(bits), 1, bits.length, format);
  const table = quantScaleTable(format);
  for (const skew of [undefined, 1 + 2 ** -10, 1 - 2 ** -10]) {
    const got = await packOnGpu(g, bits, table, format, skew);
    const bad = { maxima: 0, ties: 0, scales: 0 };
    const per = format === 'q8' ? 32 : 16; // code bytes per block
    for (let i = 0; i < ref.data.length; i++) if (got.codes[i] !== ref.data[i]) bad[i < (a.length / 32) * per ? 'maxima' : 'ties']++;
    for (let i = 0; i < ref.scales.length; i++) if (got.scales[i] !== ref.scales[i]) bad.scales++;
    expect({ skew, bad }).toEqual({ skew, bad: { maxima: 0, ties: 0, scales: 0 } });
  }
});

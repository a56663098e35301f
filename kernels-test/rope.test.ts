/**
 * RoPE: applyRopeFlux / applyRopeHalf (GPU) vs f64 references on odd sizes with batch-broadcast tables
 * and the token-chunk split path; the host tables vs the dit_tiny / qwen_vl_tiny goldens and a literal
 * transcription of the torch code. Tolerances: kernels 2e-6 abs + 1e-6 rel (two f32 products and a sum);
 * tables: the case.json tolerance for mid.pe; 2e-6 vs the literal transcription (same f32 steps).
 */
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { goldenCase } from '../test/util/golden-path.js';
import { getGpu, releaseGpu, randn, expectClose } from './harness.js';
import { ropeFluxRef, ropeHalfRef, mropeRef } from './ref/rope.js';
import { applyRopeFlux, applyRopeHalf } from '../src/ops/rope.js';
import { fluxPe, mropeCosSin, visionRopeCosSin, visionPosIds } from '../src/ops/rope-tables.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(releaseGpu);

const GOLDEN = dirname(goldenCase('dit_tiny')); // test/golden (in-repo copies), else ../shared/golden

/** Minimal safetensors reader (8-byte LE header length, JSON header, data) for F32 / I64 tensors. */
function readSt(path: string): Map<string, { shape: number[]; data: Float64Array }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const hdr = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { shape: number[]; data: Float64Array }>();
  for (const [name, e] of Object.entries(hdr)) {
    if (name === '__metadata__') continue;
    const [a, b] = e.data_offsets;
    const raw = buf.subarray(8 + n + a, 8 + n + b);
    const bytes = new Uint8Array(raw); // copy: aligned
    let data: Float64Array;
    if (e.dtype === 'F32') data = Float64Array.from(new Float32Array(bytes.buffer, 0, bytes.length / 4));
    else if (e.dtype === 'I64') data = Float64Array.from(new BigInt64Array(bytes.buffer, 0, bytes.length / 8), Number);
    else continue;
    out.set(name, { shape: e.shape, data });
  }
  return out;
}

function tolFor(caseDir: string, name: string): { atol: number; rtol: number } {
  const cj = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8')) as { tolerance: { match: string; atol?: number; rtol?: number }[] };
  const esc = (s: string) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  const e = cj.tolerance.find((t) => new RegExp(`^${esc(t.match)}$`).test(name));
  if (!e || e.atol === undefined) throw new Error(`no float tolerance for ${name} in ${caseDir}/case.json`);
  return { atol: e.atol, rtol: e.rtol ?? 0 };
}

function poisonNext(g: Gpu, shape: number[]): void {
  const t = g.empty(shape);
  g.writeInto(t, new Float32Array(t.numel).fill(NaN));
  t.dispose();
}

const KCASES: [number, number, number, number, number][] = [
  // B, L, H, Dh, Bp (table batch: 1 = broadcast)
  [1, 1, 1, 2, 1],
  [2, 3, 3, 12, 2],
  [2, 17, 2, 24, 1],
  [1, 70, 3, 64, 1],
  [3, 17, 1, 80, 3],
  [1, 3, 2, 128, 1],
];

describe('rope kernels', () => {
  for (const [B, L, H, Dh, Bp] of KCASES) {
    test(`flux + half B=${B} L=${L} H=${H} Dh=${Dh} table batch ${Bp}`, async () => {
      const g = await getGpu();
      const x = randn(B * L * H * Dh, Dh + L, 3);
      const pe = randn(Bp * L * Dh * 2, 7 + L);
      const cos = randn(Bp * L * Dh, 8 + L), sin = randn(Bp * L * Dh, 9 + L);
      const xt = g.upload(x, [B, L, H, Dh]);
      const pt = g.upload(pe, [Bp, L, Dh / 2, 2, 2]);
      const ct = g.upload(cos, [Bp, L, Dh]), st = g.upload(sin, [Bp, L, Dh]);
      poisonNext(g, [B, L, H, Dh]);
      const yf = applyRopeFlux(xt, pt);
      expectClose(`flux B=${B} L=${L} Dh=${Dh}`, await g.readF32(yf), ropeFluxRef(x, pe, B, L, H, Dh, Bp), 2e-6, 1e-6);
      yf.dispose();
      poisonNext(g, [B, L, H, Dh]);
      const yh = applyRopeHalf(xt, ct, st);
      expectClose(`half B=${B} L=${L} Dh=${Dh}`, await g.readF32(yh), ropeHalfRef(x, cos, sin, B, L, H, Dh, Bp), 2e-6, 1e-6);
      for (const t of [yh, xt, pt, ct, st]) t.dispose();
    });
  }

  test('token-chunk split under a small binding limit', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    const [B, L, H, Dh] = [2, 37, 3, 20];
    const x = randn(B * L * H * Dh, 5, 2), pe = randn(L * Dh * 2, 6), cos = randn(B * L * Dh, 7), sin = randn(B * L * Dh, 8);
    const xt = g.upload(x, [B, L, H, Dh]), pt = g.upload(pe, [1, L, Dh / 2, 2, 2]);
    const ct = g.upload(cos, [B, L, Dh]), st = g.upload(sin, [B, L, Dh]);
    try {
      g.maxBindingBytes = 1200; // 240 B per x token, 160 B per pe row → 5 tokens per chunk, misaligned views
      poisonNext(g, [B, L, H, Dh]);
      const yf = applyRopeFlux(xt, pt);
      expectClose('flux split', await g.readF32(yf), ropeFluxRef(x, pe, B, L, H, Dh, 1), 2e-6, 1e-6);
      poisonNext(g, [B, L, H, Dh]);
      const yh = applyRopeHalf(xt, ct, st);
      expectClose('half split', await g.readF32(yh), ropeHalfRef(x, cos, sin, B, L, H, Dh, B), 2e-6, 1e-6);
      yf.dispose();
      yh.dispose();
    } finally {
      g.maxBindingBytes = saved;
    }
    for (const t of [xt, pt, ct, st]) t.dispose();
  });

  test('argument errors name the shapes', async () => {
    const g = await getGpu();
    const x = g.upload(randn(2 * 3 * 8, 1), [1, 2, 3, 8]);
    const pe = g.upload(randn(2 * 3 * 4, 1), [1, 2, 3, 2, 2]);
    expect(() => applyRopeFlux(x, pe)).toThrow(/pe \[1,2,3,2,2\] must be .* for x \[1,2,3,8\]/);
    const c = g.upload(randn(2 * 6, 1), [1, 2, 6]);
    expect(() => applyRopeHalf(x, c, c)).toThrow(/cos \[1,2,6\] must be/);
    for (const t of [x, pe, c]) t.dispose();
  });
});

describe('rope tables', () => {
  const dit = join(GOLDEN, 'dit_tiny');
  test('fluxPe matches dit_tiny mid.pe', () => {
    const io = readSt(join(dit, 'io.safetensors'));
    const ids = io.get('mid.ids')!, pe = io.get('mid.pe')!;
    expect(ids.shape).toEqual([2, 64, 3]);
    const got = fluxPe(Float32Array.from(ids.data), 2, 64, [16, 24, 24], 10000);
    const { atol, rtol } = tolFor(dit, 'mid.pe');
    expect(pe.shape).toEqual([2, 1, 64, 32, 2, 2]);
    expectClose(`fluxPe vs mid.pe (atol ${atol} rtol ${rtol})`, got, pe.data, atol, rtol);
    // and much tighter than the case tolerance: both are f64 math rounded once to f32
    expectClose('fluxPe vs mid.pe (tight)', got, pe.data, 1e-6, 0);
  });

  const qv = join(GOLDEN, 'qwen_vl_tiny');
  test('vision (h, w) ids match qwen_vl_tiny mid.vision_rot_pos_ids', () => {
    const io = readSt(join(qv, 'io.safetensors'));
    const grid = io.get('in.image_grid_thw')!.data;
    const ids = visionPosIds([[grid[0], grid[1], grid[2]]], 2);
    expect(Array.from(ids)).toEqual(Array.from(io.get('mid.vision_rot_pos_ids')!.data));
  });

  test('visionRopeCosSin = cat(rot, rot) of (h, w) frequencies', () => {
    const grid: [number, number, number][] = [[1, 4, 6], [2, 2, 4]];
    const headDim = 16;
    const { cos, sin } = visionRopeCosSin(grid, 2, headDim);
    const ids = visionPosIds(grid, 2);
    expect(cos.length).toBe((24 + 16) * headDim);
    for (let n = 0; n < ids.length / 2; n++)
      for (let e = 0; e < headDim; e++) {
        const j = e % 8; // rotary lanes: 4 h-frequencies then 4 w-frequencies (dim = headDim/2 = 8)
        const inv = Math.fround(1 / Math.fround(10000 ** Math.fround((2 * (j % 4)) / 8)));
        const ang = Math.fround(ids[2 * n + (j < 4 ? 0 : 1)] * inv);
        expect(Math.abs(cos[n * headDim + e] - Math.cos(ang))).toBeLessThan(2e-7);
        expect(Math.abs(sin[n * headDim + e] - Math.sin(ang))).toBeLessThan(2e-7);
      }
  });

  test('mropeCosSin matches the literal transformers transcription', () => {
    const [B, L, Dh] = [2, 19, 16];
    const pos = new Int32Array(3 * B * L).map((_, i) => (i * 37) % 301);
    const got = mropeCosSin(pos, B, L, Dh, 1e6, [2, 3, 3]);
    const ref = mropeRef(pos, B, L, Dh, 1e6, [2, 3, 3]);
    expectClose('mrope cos', got.cos, ref.cos, 2e-7, 0);
    expectClose('mrope sin', got.sin, ref.sin, 2e-7, 0);
    // real sizes: headDim 128, section [16, 24, 24], positions into the thousands
    const pos2 = new Int32Array(3 * 1 * 5).map((_, i) => 4000 + i * 13);
    const g2 = mropeCosSin(pos2, 1, 5, 128, 1e6, [16, 24, 24]), r2 = mropeRef(pos2, 1, 5, 128, 1e6, [16, 24, 24]);
    expectClose('mrope cos 128', g2.cos, r2.cos, 2e-7, 0);
    expect(() => mropeCosSin(pos2, 1, 5, 128, 1e6, [16, 24, 25])).toThrow(/must sum to headDim\/2 = 64/);
  });
});

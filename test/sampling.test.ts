/**
 * CPU tests of the pure sampler pieces (src/pipeline/sampling.ts, prepare.ts) against the golden data:
 * the schedule table, packing/ids of dit_tiny, and the whole CFG + Euler loop of sampler_tiny replayed
 * with the stored DiT outputs (so no GPU is needed here; test/sampler.test.ts runs the real DiT).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { cfgCombine, denoise, getSchedule, linspaceF32, processDiffNorm, sampleLatent, shiftMu, type Predictor } from '../src/pipeline/sampling.js';
import { imageIds, imageSeqLen, pack2x2Host, prepare, unpack2x2Host, unpackForImage } from '../src/pipeline/prepare.js';
import { compare, randn } from '../kernels-test/harness.js';

/** Minimal F32 safetensors reader (test-local; the real one is src/io/safetensors.ts). */
function readF32Tensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, v] of Object.entries<any>(header)) {
    if (k === '__metadata__' || v.dtype !== 'F32') continue;
    const [b, e] = v.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    out.set(k, { shape: v.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)) });
  }
  return out;
}

function expectOk(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, atol: number, rtol = 0): void {
  const r = compare(name, got, ref, atol, rtol);
  if (!r.pass) throw new Error(r.msg);
}

const samplerDir = goldenCase('sampler_tiny');
const samplerCase = JSON.parse(readFileSync(join(samplerDir, 'case.json'), 'utf8'));
const samplerIo = readF32Tensors(join(samplerDir, 'io.safetensors'));
const get = (m: Map<string, { data: Float32Array }>, k: string): Float32Array => {
  const t = m.get(k);
  if (!t) throw new Error(`golden tensor ${k} missing`);
  return t.data;
};

describe('schedule', () => {
  test('linspace(1, 0, n) endpoints and symmetry', () => {
    const t = linspaceF32(1, 0, 29);
    expect(t[0]).toBe(1);
    expect(t[28]).toBe(0);
    expect(t[14]).toBeCloseTo(0.5, 7);
  });

  test('mu is linear through (256, 0.5) and (4096, 1.15)', () => {
    expect(shiftMu(256)).toBeCloseTo(0.5, 12);
    expect(shiftMu(4096)).toBeCloseTo(1.15, 12);
    for (const e of samplerCase.schedule_table_detail) expect(shiftMu(e.image_seq_len)).toBeCloseTo(e.mu, 12);
  });

  test('get_schedule equals every entry of sampler_tiny spec.schedule_table (atol 1e-6)', () => {
    const pairs: [number, number][] = samplerCase.spec.schedule_table;
    expect(pairs.length).toBeGreaterThan(0);
    for (const [S, L] of pairs) {
      const key = `out.schedule.n${S}_len${L}`;
      const got = getSchedule(S, L);
      expect(got.length).toBe(S + 1);
      expectOk(key, got, get(samplerIo, key), 1e-6);
      expect(got[S]).toBe(0);
      for (let i = 1; i <= S; i++) expect(got[i]).toBeLessThan(got[i - 1]);
    }
    expectOk('timesteps', getSchedule(4, 24), get(samplerIo, 'timesteps'), 1e-6);
  });

  test('shift=false is the plain linspace', () => {
    expectOk('noshift', getSchedule(4, 4096, { shift: false }), [1, 0.75, 0.5, 0.25, 0], 1e-7);
  });

  test('bad arguments fail with a message naming them', () => {
    expect(() => getSchedule(0, 10)).toThrow(/numSteps/);
    expect(() => getSchedule(4, 0)).toThrow(/imageSeqLen/);
  });
});

describe('packing and ids', () => {
  const dit = readF32Tensors(join(goldenCase('dit_tiny'), 'io.safetensors'));

  test('prepare() reproduces dit_tiny in.img and in.img_ids exactly', () => {
    const noise = get(dit, 'in.latent_noisy'), ref = get(dit, 'in.latent_ref');
    const p = prepare(noise, ref, [1, 16, 8, 12], 2, 16, 'v1.0');
    expect([p.h, p.w, p.channels]).toEqual([4, 6, 64]);
    expectOk('in.img', p.img, get(dit, 'in.img'), 0);
    expectOk('in.img_ids', p.imgIds, get(dit, 'in.img_ids'), 0);
    expectOk('in.txt_ids', p.txtIds, get(dit, 'in.txt_ids'), 0);
  });

  test('unpack inverts pack on odd grids; sampler_tiny out.latent = unpack(out.latent_packed)', () => {
    for (const [B, C, H, W] of [[1, 3, 2, 2], [2, 16, 6, 10], [1, 5, 14, 2]]) {
      const x = randn(B * C * H * W, 7 + H);
      const t = pack2x2Host(x, [B, C, H, W]);
      expectOk(`roundtrip ${[B, C, H, W]}`, unpack2x2Host(t, B, C, H / 2, W / 2), x, 0);
    }
    const { latent, shape } = unpackForImage(get(samplerIo, 'out.latent_packed'), 1, 64, 96);
    expect(shape).toEqual([1, 16, 8, 12]);
    expectOk('out.latent', latent, get(samplerIo, 'out.latent'), 0);
  });

  test('ids are (0, row, col); seq len counts noisy tokens only', () => {
    const ids = imageIds(1, 3, 5);
    expect(Array.from(ids.subarray(3 * 7, 3 * 8))).toEqual([0, 1, 2]);
    expect(imageSeqLen(128, 128)).toBe(4096);
    expect(() => pack2x2Host(new Float32Array(12), [1, 1, 3, 4])).toThrow(/even H, W/);
  });
});

describe('CFG and Euler loop', () => {
  test('cfgCombine vs f64 reference, plain and diff-norm branch', () => {
    const C = 17, L = 9;
    const cond = randn(C * L, 1, 2), uncond = randn(C * L, 2, 2);
    const g = 6;
    const plain = cfgCombine(cond, uncond, C, g);
    const normed = cfgCombine(cond, uncond, C, g, 0.4);
    const refPlain = new Float64Array(C * L), refNorm = new Float64Array(C * L);
    for (let r = 0; r < L; r++) {
      let ss = 0;
      for (let c = 0; c < C; c++) ss += (cond[r * C + c] - uncond[r * C + c]) ** 2;
      const n = Math.sqrt(ss);
      const div = n > 1 ? n ** 0.4 : 1;
      for (let c = 0; c < C; c++) {
        const d = cond[r * C + c] - uncond[r * C + c];
        refPlain[r * C + c] = uncond[r * C + c] + g * d;
        refNorm[r * C + c] = uncond[r * C + c] + (g * d) / div;
      }
    }
    expectOk('plain', plain, refPlain, 1e-5, 1e-6);
    expectOk('diffnorm', normed, refNorm, 1e-5, 1e-6);
    expect(processDiffNorm(0.5, 0.4)).toBe(1);
    expect(processDiffNorm(1, 0.4)).toBe(1);
    expect(processDiffNorm(32, 0.4)).toBeCloseTo(4, 5);
  });

  /** Replays stored DiT outputs and checks each DiT input is the expected state. */
  function replay(prefix: string): Predictor & { calls: number } {
    const p = {
      calls: 0,
      async predict(img: Float32Array, batch: number, t: number): Promise<Float32Array> {
        const k = p.calls++;
        expect(batch).toBe(2);
        expect(t).toBe(get(samplerIo, `step${k}.t_vec`)[0]);
        const state = k === 0 ? get(samplerIo, 'in.img').subarray(0, img.length / 2) : get(samplerIo, `${prefix}step${k - 1}.latent_after`);
        expectOk(`${prefix}step${k} input row 0`, img.subarray(0, img.length / 2), state, 0.005, 0.005);
        expectOk(`${prefix}step${k} input row 1`, img.subarray(img.length / 2), state, 0.005, 0.005);
        return get(samplerIo, `${prefix}step${k}.pred_raw`).slice();
      },
    };
    return p;
  }

  test('denoise replayed on sampler_tiny pred_raw gives every step and out.latent_packed', async () => {
    const ts = get(samplerIo, 'timesteps');
    const model = replay('');
    const seen: number[] = [];
    const out = await denoise(model, get(samplerIo, 'in.img'), 2, {
      timesteps: ts,
      cfgGuidance: samplerCase.spec.cfg_guidance,
      onStep: (s) => {
        seen.push(s.step);
        expectOk(`step${s.step}.pred_guided`, s.predGuided, get(samplerIo, `step${s.step}.pred_guided`), 0.005, 0.005);
        expectOk(`step${s.step}.latent_after`, s.latentAfter, get(samplerIo, `step${s.step}.latent_after`), 0.005, 0.005);
        // the reference half is carried bit-exactly
        const half = s.latentAfter.length / 2;
        expectOk('ref half', s.latentAfter.subarray(half), get(samplerIo, 'in.img').subarray(half, 2 * half), 0);
      },
    });
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(model.calls).toBe(4);
    expectOk('out.latent_packed', out, get(samplerIo, 'out.latent_packed'), 0.005, 0.005);
  });

  test('trunc.* variant: diff-norm CFG while t_curr > spec.extra_truncate', async () => {
    const model = replay('trunc.');
    const out = await denoise(model, get(samplerIo, 'in.img'), 2, {
      timesteps: get(samplerIo, 'timesteps'),
      cfgGuidance: samplerCase.spec.cfg_guidance,
      timestepsTruncate: samplerCase.spec.extra_truncate,
      diffNormExponent: samplerCase.spec.diff_norm_exponent,
      onStep: (s) => expectOk(`trunc.step${s.step}.latent_after`, s.latentAfter, get(samplerIo, `trunc.step${s.step}.latent_after`), 0.005, 0.005),
    });
    expectOk('trunc.out.latent_packed', out, get(samplerIo, 'trunc.out.latent_packed'), 0.005, 0.005);
  });

  test('sampleLatent (prepare + schedule + denoise + unpack) on replayed outputs gives out.latent', async () => {
    const T = samplerIo.get('in.llm_embedding')!.shape[1];
    const source = {
      predictor: (c: { imgIds: Float32Array; txtIds: Float32Array; T: number; L: number }) => {
        expectOk('img_ids', c.imgIds, get(samplerIo, 'in.img_ids'), 0);
        expect([c.T, c.L, c.txtIds.length]).toEqual([T, 48, 2 * T * 3]);
        return Object.assign(replay(''), { dispose: () => undefined });
      },
    };
    const steps: number[] = [];
    const { latent, timesteps } = await sampleLatent(source, get(samplerIo, 'in.noise'), get(samplerIo, 'in.latent_ref'), [1, 16, 8, 12],
      get(samplerIo, 'in.llm_embedding'), get(samplerIo, 'in.mask'), T, { version: 'v1.0', numSteps: 4, cfgGuidance: 6, onStep: (s) => void steps.push(s.step) });
    expect(steps).toEqual([0, 1, 2, 3]);
    expectOk('timesteps', timesteps, get(samplerIo, 'timesteps'), 1e-6);
    expectOk('out.latent', latent, get(samplerIo, 'out.latent'), 0.005, 0.005);
  });

  test('no CFG (cfgGuidance -1) runs a batch of 1 and uses the prediction directly', async () => {
    const C = 4, N = 3;
    const img = randn(2 * N * C, 5);
    const model: Predictor = { predict: async (x, b) => { expect(b).toBe(1); return x.map((v) => 2 * v); } };
    const out = await denoise(model, img, 1, { timesteps: [1, 0.5], cfgGuidance: -1, channels: C });
    for (let i = 0; i < N * C; i++) expect(out[i]).toBeCloseTo(img[i] * (1 - 0.5 * 2), 6);
  });
});

/**
 * FLUX VAE: the vae_tiny golden through the runner (case tolerances), the same run under a forced small
 * binding limit (every tensor bitwise identical), and the loader's key check against the real key set
 * (header-only fake of vae.safetensors from real_shapes/vae.json).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu, randn, expectClose } from '../kernels-test/harness.js';
import * as ref from '../kernels-test/ref/conv.js';
import { writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { goldenCase } from './util/golden-path.js';
import { writeHeaderOnlyFake } from './util/fake-checkpoint.js';
import { runGolden, type GoldenResult } from '../src/golden/runner.js';
import { formatDetail } from '../src/golden/compare.js';
import { Checkpoint, shapesJsonEntries } from '../src/io/checkpoint.js';
import { AutoEncoder, checkVaeCheckpoint, expectedVaeKeys, REAL_AE, type AeConfig } from '../src/models/vae.js';

afterAll(releaseGpu);

const OUTS = ['out.moments', 'out.mean', 'out.logvar', 'out.latent', 'out.latent_sampled', 'out.decoded', 'out.decoded_random'];

describe('vae_tiny golden (GPU)', () => {
  let first: GoldenResult;
  test('passes at the case tolerances, every out.* compared', async () => {
    const g = await getGpu();
    const t0 = Date.now();
    first = await runGolden(goldenCase('vae_tiny'), { gpu: g, log: () => undefined });
    process.stderr.write(`vae_tiny in ${((Date.now() - t0) / 1000).toFixed(1)} s\n` + first.details.map(formatDetail).join('\n') + '\n');
    const byName = new Map(first.report.tensors.map((t) => [t.name, t]));
    for (const n of OUTS) {
      expect(byName.get(n)).toBeDefined();
      expect(byName.get(n)!.skipped).toBe(false);
    }
    const failed = first.details.filter((d) => !d.pass).map(formatDetail);
    expect(failed).toEqual([]);
    expect(first.report.pass).toBe(true);
    // every mid.* of the case is computed too
    expect(first.report.tensors.filter((t) => t.skipped).map((t) => t.name)).toEqual([]);
  });

  test('forced small binding limit: every tensor identical', async () => {
    const g = await getGpu();
    const saved = g.maxBindingBytes;
    g.maxBindingBytes = 64 * 1024; // a 32-channel 64x48 activation is 384 KiB: conv/norm/upsample split
    let second: GoldenResult;
    await g.sync();
    const live0 = g.pool.liveBytes;
    try {
      second = await runGolden(goldenCase('vae_tiny'), { gpu: g, log: () => undefined });
    } finally {
      g.maxBindingBytes = saved;
    }
    await g.sync();
    expect(g.pool.liveBytes).toBe(live0); // weights and every intermediate released
    expect(second.report.pass).toBe(true);
    expect([...second.emitted.keys()].sort()).toEqual([...first.emitted.keys()].sort());
    for (const [n, e] of first.emitted) {
      const d = second.emitted.get(n)!.data;
      let diff = 0;
      for (let i = 0; i < d.length; i++) if (!Object.is(d[i], e.data[i])) diff++;
      if (diff) throw new Error(`${n}: ${diff}/${d.length} values differ under the small binding limit`);
    }
  });
});

describe('VAE loader key check (real key set, header-only fake)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-vae-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const realShapes = join(goldenCase('real_shapes'), 'vae.json');

  test('the real key set loads with nothing missing or unexpected; config inferred = real', async () => {
    const entries = await shapesJsonEntries(realShapes);
    expect(entries.length).toBe(244);
    // our expected key set is exactly the real one
    const exp = expectedVaeKeys(REAL_AE);
    expect([...exp.keys()].sort()).toEqual(entries.map((e) => e.name).sort());
    for (const e of entries) expect(exp.get(e.name)).toEqual(e.shape);
    const p = join(dir, 'vae.safetensors');
    await writeHeaderOnlyFake(p, entries);
    const ck = await Checkpoint.open(p);
    try {
      const cfg = checkVaeCheckpoint(ck);
      expect(cfg).toEqual(REAL_AE);
    } finally {
      await ck.close();
    }
  });

  test('the header-only fake (all zeros) loads onto the GPU and runs at the real channel counts', async () => {
    const g = await getGpu();
    const p = join(dir, 'vae.safetensors');
    const live0 = g.pool.liveBytes;
    const ae = await AutoEncoder.load(g, p);
    expect(g.pool.liveBytes - live0).toBeGreaterThanOrEqual(83819683 * 4); // every real parameter, f32
    const img = g.upload(new Float32Array(3 * 16 * 16).fill(0.5), [1, 3, 16, 16]);
    const enc = await ae.encode(img);
    expect(enc.moments.shape).toEqual([1, 32, 2, 2]);
    const dec = await ae.decode(enc.latent); // mid attention: one head of Dh = 512
    expect(dec.shape).toEqual([1, 3, 16, 16]);
    expect([...(await g.readF32(dec))].every((v) => v === 0)).toBe(true); // zero weights, zero biases
    for (const t of [img, enc.moments, enc.mean, enc.logvar, enc.latent, dec]) t.dispose();
    ae.dispose();
    await g.sync();
    expect(g.pool.liveBytes).toBe(live0);
  });

  test('a removed key or a changed shape fails naming it', async () => {
    const entries = await shapesJsonEntries(realShapes);
    const removed = 'decoder.up.2.block.1.norm2.bias';
    const p1 = join(dir, 'removed.safetensors');
    await writeHeaderOnlyFake(p1, entries.filter((e) => e.name !== removed));
    const c1 = await Checkpoint.open(p1);
    expect(() => checkVaeCheckpoint(c1)).toThrow(new RegExp(`missing.*${removed.replace(/\./g, '\\.')}`));
    await c1.close();
    const changed = 'encoder.mid.attn_1.k.weight';
    const p2 = join(dir, 'changed.safetensors');
    await writeHeaderOnlyFake(p2, entries.map((e) => (e.name === changed ? { ...e, shape: [512, 512, 3, 3] } : e)));
    const c2 = await Checkpoint.open(p2);
    expect(() => checkVaeCheckpoint(c2)).toThrow(new RegExp(`${changed.replace(/\./g, '\\.')} is \\[512,512,3,3\\], expected \\[512,512,1,1\\]`));
    await c2.close();
    const p3 = join(dir, 'extra.safetensors');
    await writeHeaderOnlyFake(p3, [...entries, { name: 'encoder.quant_conv.weight', dtype: 'F32', shape: [32, 32, 1, 1] }]);
    const c3 = await Checkpoint.open(p3);
    expect(() => checkVaeCheckpoint(c3)).toThrow(/unexpected: encoder\.quant_conv\.weight/);
    await c3.close();
  });
});

// ---- another channel layout vs a plain f64 reference of the official modules ----------------------

type T = { d: Float64Array; s: number[] }; // [B, C, H, W]

/** The official AutoEncoder in f64 on the host, over the same weights. */
function refVae(w: Map<string, Float32Array>, cfg: AeConfig) {
  const conv = (x: T, p: string, stride = 1, pad: [number, number, number, number] = [1, 1, 1, 1]): T => {
    const wt = w.get(`${p}.weight`)!, [B, C, H, W] = x.s;
    const O = w.get(`${p}.bias`)!.length, K = Math.round(Math.sqrt(wt.length / (O * C)));
    const r = ref.conv2d(x.d, wt, w.get(`${p}.bias`)!, { B, C, H, W, O, KH: K, KW: K }, stride, K === 1 ? [0, 0, 0, 0] : pad);
    return { d: r.out, s: [B, O, r.Ho, r.Wo] };
  };
  const norm = (x: T, p: string, silu: boolean): T => {
    const [B, C, H, W] = x.s;
    return { d: ref.groupNorm(x.d, B, C, H * W, 32, w.get(`${p}.weight`)!, w.get(`${p}.bias`)!, 1e-6, silu), s: x.s };
  };
  const add = (a: T, b: T): T => ({ d: a.d.map((v, i) => v + b.d[i]), s: a.s });
  const resnet = (x: T, p: string): T => {
    let h = conv(norm(x, `${p}.norm1`, true), `${p}.conv1`);
    h = conv(norm(h, `${p}.norm2`, true), `${p}.conv2`);
    return add(w.has(`${p}.nin_shortcut.weight`) ? conv(x, `${p}.nin_shortcut`) : x, h);
  };
  const attn = (x: T, p: string): T => {
    const [B, C, H, W] = x.s, L = H * W;
    const hn = norm(x, `${p}.norm`, false);
    const [q, k, v] = ['q', 'k', 'v'].map((n) => ref.toTokens(conv(hn, `${p}.${n}`).d, B, C, L));
    const o = new Float64Array(B * L * C);
    for (let b = 0; b < B; b++)
      for (let i = 0; i < L; i++) {
        const sc = new Float64Array(L);
        let mx = -Infinity;
        for (let j = 0; j < L; j++) {
          let s = 0;
          for (let c = 0; c < C; c++) s += q[(b * L + i) * C + c] * k[(b * L + j) * C + c];
          sc[j] = s / Math.sqrt(C);
          mx = Math.max(mx, sc[j]);
        }
        let den = 0;
        for (let j = 0; j < L; j++) den += (sc[j] = Math.exp(sc[j] - mx));
        for (let j = 0; j < L; j++) for (let c = 0; c < C; c++) o[(b * L + i) * C + c] += (sc[j] / den) * v[(b * L + j) * C + c];
      }
    const nchw = new Float64Array(B * C * L);
    for (let b = 0; b < B; b++) for (let i = 0; i < L; i++) for (let c = 0; c < C; c++) nchw[(b * C + c) * L + i] = o[(b * L + i) * C + c];
    return add(x, conv({ d: nchw, s: x.s }, `${p}.proj_out`));
  };
  const mid = (h: T, p: string) => resnet(attn(resnet(h, `${p}.block_1`), `${p}.attn_1`), `${p}.block_2`);
  const L = cfg.ch_mult.length;
  const encode = (img: T): T => {
    let h = conv(img, 'encoder.conv_in');
    for (let i = 0; i < L; i++) {
      for (let j = 0; j < cfg.num_res_blocks; j++) h = resnet(h, `encoder.down.${i}.block.${j}`);
      if (i !== L - 1) h = conv(h, `encoder.down.${i}.downsample.conv`, 2, [0, 1, 0, 1]);
    }
    return conv(norm(mid(h, 'encoder.mid'), 'encoder.norm_out', true), 'encoder.conv_out');
  };
  const decode = (z: T): T => {
    let h = mid(conv(z, 'decoder.conv_in'), 'decoder.mid');
    for (let i = L - 1; i >= 0; i--) {
      for (let j = 0; j <= cfg.num_res_blocks; j++) h = resnet(h, `decoder.up.${i}.block.${j}`);
      if (i !== 0) {
        const [B, C, H, W] = h.s;
        h = conv({ d: ref.upsampleNearest2x(h.d, B * C, H, W), s: [B, C, 2 * H, 2 * W] }, `decoder.up.${i}.upsample.conv`);
      }
    }
    return conv(norm(h, 'decoder.norm_out', true), 'decoder.conv_out');
  };
  return { encode, decode };
}

describe('VAE of another channel layout (GPU) vs the f64 reference', () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-vae2-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  // 3 levels, 2 res blocks (encoder 2, decoder 3 per level), channel changes in both directions,
  // z = 4, batch 2, odd non-square image (two stride-2 downsamples of 22x14 with the (0,1,0,1) pad)
  const cfg: AeConfig = { ...REAL_AE, ch: 32, ch_mult: [1, 2, 1], num_res_blocks: 2, z_channels: 4, out_ch: 3, scale_factor: 0.5, shift_factor: 0.25 };
  test(`ch 32, ch_mult [1,2,1], 2 res blocks, z 4, B=2, 22x14`, async () => {
    const g = await getGpu();
    const weights = new Map<string, Float32Array>();
    const tensors: Record<string, WriteTensor> = {};
    let seed = 100;
    for (const [name, shape] of expectedVaeKeys(cfg)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const fanIn = shape.length === 4 ? shape[1] * shape[2] * shape[3] : 1;
      let d = randn(n, seed++, shape.length === 4 ? Math.sqrt(3 / fanIn) : 0.05);
      if (/norm.*\.weight$/.test(name)) d = d.map((v) => 1 + 2 * v);
      weights.set(name, d);
      tensors[name] = { dtype: 'F32', shape, data: d };
    }
    const file = join(dir, 'vae.safetensors');
    await writeSafetensors(file, tensors);
    const ae = await AutoEncoder.load(g, file, { scale_factor: 0.5, shift_factor: 0.25 });
    expect(ae.config).toEqual(cfg);
    const B = 2, H = 22, W = 14;
    const img = randn(B * 3 * H * W, 7);
    const r = refVae(weights, cfg);
    const mom = r.encode({ d: Float64Array.from(img), s: [B, 3, H, W] });
    expect(mom.s).toEqual([B, 8, 5, 3]); // 22 -> 11 -> 5, 14 -> 7 -> 3
    const enc = await ae.encode(g.upload(img, [B, 3, H, W]));
    expectClose('moments', await g.readF32(enc.moments), mom.d, 1e-4, 1e-3);
    const plane = 4 * 5 * 3;
    const refLatent = new Float64Array(B * plane);
    for (let b = 0; b < B; b++) for (let i = 0; i < plane; i++) refLatent[b * plane + i] = 0.5 * (mom.d[b * 2 * plane + i] - 0.25);
    expectClose('latent (mean path)', await g.readF32(enc.latent), refLatent, 1e-4, 1e-3);
    const dec = await ae.decode(enc.latent);
    const refDec = r.decode({ d: refLatent.map((v) => v / 0.5 + 0.25), s: [B, 4, 5, 3] });
    expect(dec.shape).toEqual([B, 3, 20, 12]);
    expectClose('decoded', await g.readF32(dec), refDec.d, 1e-4, 1e-3);
    ae.dispose();
  });
});

/**
 * The module base (nn/module.ts) on the DiT: the key set derived from the declaration is the real
 * checkpoints' (official v1.0 and the diffusers v1.2 transformer/, both from the header-only real_shapes),
 * loading fills every declared parameter and frees them all again, the byte count the planner reads is
 * what the pool hands out, and scoped forwards leave nothing alive but their result.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getGpu, randn, releaseGpu } from '../kernels-test/harness.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { ditConfigFromDiffusers, expectedDiffusersDitKeys } from '../src/models/diffusers-map.js';
import { DoubleStreamBlock, RopePe, SingleStreamBlock, Step1XEdit } from '../src/models/dit.js';
import { configFromCheckpoint, expectedDitKeys, pooledBytes, REAL_CONNECTOR, REAL_DIT } from '../src/models/dit-config.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { withWeightPolicy } from '../src/nn/weight.js';

afterAll(releaseGpu);
const shapes = (file: string) => new Map<string, number[]>(JSON.parse(readFileSync(file, 'utf8')).tensors.map((t: { name: string; shape: number[] }) => [t.name, t.shape]));
const sorted = (m: Map<string, number[]>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));

describe('declared keys = the real checkpoints', () => {
  test('official v1.0 (step1x-edit-i1258): 817 tensors, every name and shape', () => {
    const real = shapes(join(REPO_ROOT, 'test/golden/real_shapes/dit_step1x-edit-i1258.json'));
    const derived = new Step1XEdit({ dit: REAL_DIT as typeof REAL_DIT & { axes_dim: number[] }, connector: REAL_CONNECTOR, version: 'v1.0' }).expectedKeys();
    expect(derived.size).toBe(817);
    expect(sorted(derived)).toEqual(sorted(real));
  });

  test('diffusers v1.2 transformer/ (1198 tensors): the declaration mapped by diffusers-map', () => {
    const dir = join(REPO_ROOT, 'test/golden/real_shapes_v12');
    const conf = JSON.parse(readFileSync(join(dir, 'configs.json'), 'utf8'))['transformer/config.json'].value;
    const { cfg, textTokenMapping } = ditConfigFromDiffusers(conf, 'transformer/config.json');
    const real = shapes(join(dir, 'transformer.json'));
    expect(real.size).toBe(1198);
    expect(sorted(expectedDiffusersDitKeys(cfg, textTokenMapping))).toEqual(sorted(real));
    expect(expectedDitKeys(cfg).has('text_token_mapping.weight')).toBe(true);
  });
});

describe('load, bytes, dispose and scoped forwards (GPU, dit_tiny)', () => {
  test('a block loads every declared tensor, counts what the pool holds, frees it all, and can load again', async () => {
    const g = await getGpu();
    const dir = goldenCase('dit_tiny');
    const spec = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).spec;
    const ck = await Checkpoint.open(join(dir, 'dit.safetensors'));
    try {
      const cfg = configFromCheckpoint(ck.keys(), (n) => (ck.has(n) ? ck.info(n).shape : undefined), { dit: spec.dit, connector: spec.connector });
      for (const [blk, prefix] of [[new DoubleStreamBlock(cfg.dit), 'double_blocks.0'], [new SingleStreamBlock(cfg.dit), 'single_blocks.0']] as const) {
        const base = g.pool.liveBytes;
        await blk.load(g, ck, prefix);
        expect(blk.params(prefix).every(([, p]) => p.loaded)).toBe(true);
        expect(g.pool.liveBytes - base).toBe(blk.gpuBytes(ck, prefix, pooledBytes));
        blk.dispose();
        expect(g.pool.liveBytes).toBe(base);
        expect(blk.params().some(([, p]) => p.loaded)).toBe(false);
        await blk.load(g, ck, prefix); // a streamed block is loaded once per pass
        expect(g.pool.liveBytes - base).toBe(blk.gpuBytes(ck, prefix, pooledBytes));
        blk.dispose();
      }
    } finally {
      await ck.close();
    }
  });

  test('a declared Linear is named by its checkpoint key once loaded (a packed weight read as a plain tensor says which)', async () => {
    const g = await getGpu();
    const dir = goldenCase('dit_tiny');
    const spec = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).spec;
    const ck = withWeightPolicy(await Checkpoint.open(join(dir, 'dit.safetensors')), { weights: 'q8' });
    try {
      const cfg = configFromCheckpoint(ck.keys(), (n) => (ck.has(n) ? ck.info(n).shape : undefined), { dit: spec.dit, connector: spec.connector });
      const blk = new DoubleStreamBlock(cfg.dit);
      expect(blk.img_attn.qkv.name).toBe('');
      await blk.load(g, ck, 'double_blocks.0');
      expect(blk.img_attn.qkv.name).toBe('double_blocks.0.img_attn.qkv');
      expect(() => blk.img_attn.qkv.weight).toThrow(/^Linear double_blocks\.0\.img_attn\.qkv: weight is q8, not a plain tensor$/);
      expect(blk.img_attn.qkv.rows(0, 4).name).toBe('double_blocks.0.img_attn.qkv');
      blk.dispose();
    } finally {
      await ck.close();
    }
  });

  test('a block forward leaves only its result alive; a disposed block names the missing load', async () => {
    const g = await getGpu();
    const dir = goldenCase('dit_tiny');
    const spec = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).spec;
    const ck = await Checkpoint.open(join(dir, 'dit.safetensors'));
    try {
      const cfg = configFromCheckpoint(ck.keys(), (n) => (ck.has(n) ? ck.info(n).shape : undefined), { dit: spec.dit, connector: spec.connector });
      const d = cfg.dit, H = d.hidden_size, hd = H / d.num_heads, B = 2, T = 5, L = 17;
      const [dbl, sgl] = [await new DoubleStreamBlock(d).load(g, ck, 'double_blocks.0'), await new SingleStreamBlock(d).load(g, ck, 'single_blocks.0')];
      const img = g.upload(randn(B * L * H, 1), [B, L, H]), txt = g.upload(randn(B * T * H, 2), [B, T, H]);
      const vec = g.upload(randn(B * H, 3), [B, H]), joint = g.upload(randn(B * (T + L) * H, 4), [B, T + L, H]);
      const pe = RopePe.build(g, randn((T + L) * hd * 2, 5), 1, T + L, hd);
      const live = () => g.pool.liveBytes;
      const before = live();
      const [i2, t2] = dbl.forward(img, txt, vec, pe);
      expect(live() - before).toBe(pooledBytes(i2.byteLength) + pooledBytes(t2.byteLength));
      const mid = live();
      const j2 = sgl.forward(joint, vec, pe);
      expect(live() - mid).toBe(pooledBytes(j2.byteLength));
      for (const t of [i2, t2, j2, img, txt, vec, joint]) t.dispose();
      pe.dispose();
      dbl.dispose();
      expect(() => sgl.forward(joint, vec, pe)).toThrow();
      sgl.dispose();
      expect(() => new SingleStreamBlock(d).forward(joint, vec, pe)).toThrow(/before load\(\) or after dispose\(\)/);
    } finally {
      await ck.close();
    }
  });
});

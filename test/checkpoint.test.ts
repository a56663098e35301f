/**
 * Checkpoint + checkKeys against the real key lists (../shared/golden/real_shapes*): header-only sparse
 * fakes of the real VAE (244 tensors), DiT (817 tensors, 24.9 GB) and sharded Qwen2.5-VL (729 tensors)
 * open instantly and match; a removed key, a changed shape or an extra key fails naming it.
 * Then loadWeight / Linear on the GPU (bf16 stays packed, f16, f32, widening), vs a plain-TS reference.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Checkpoint, checkKeys, expectedFromShapesJson, shapesJsonEntries } from '../src/io/checkpoint.js';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { ExitCode, Step1xError } from '../src/errors.js';
import { f32ArrayToBf16, f32ArrayToF16, roundToBf16, bf16ArrayToF32, f16ArrayToF32 } from '../src/runtime/half.js';
import { writeHeaderOnlyFake, writeFakeShardedQwen, writeMalformedCases } from './util/fake-checkpoint.js';
import { REPO_ROOT, goldenCase } from './util/golden-path.js';
import { getGpu, releaseGpu, randn, expectClose } from '../kernels-test/harness.js';
import { loadWeight } from '../src/nn/weights.js';
import { Linear } from '../src/nn/linear.js';

const SHARED = dirname(goldenCase('real_shapes')); // test/golden (in-repo copies), else ../shared/golden

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'step1x-ck-'));
});
afterAll(async () => {
  releaseGpu();
  await rm(dir, { recursive: true, force: true });
});

async function expectWeightsError(f: () => unknown, re: RegExp): Promise<string> {
  let err: unknown;
  try {
    await f();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof Step1xError)) throw new Error(`expected Step1xError matching ${re}, got ${String(err)}`);
  if (!re.test(err.message)) throw new Error(`message ${JSON.stringify(err.message)} does not match ${re}`);
  expect(err.code).toBe(ExitCode.WEIGHTS);
  expect(err.message).not.toContain('\n');
  return err.message;
}

describe('real key lists on sparse fakes', () => {
  test('VAE (244 tensors, f32) and DiT (817 tensors, 24.9 GB bf16) single files', async () => {
    for (const [json, file, count] of [
      ['real_shapes/vae.json', 'vae.safetensors', 244],
      ['real_shapes/dit_step1x-edit-i1258.json', 'step1x-edit-i1258.safetensors', 817],
    ] as const) {
      const entries = await shapesJsonEntries(join(SHARED, json));
      expect(entries.length).toBe(count);
      const p = join(dir, file);
      const size = await writeHeaderOnlyFake(p, entries);
      const meta = JSON.parse(await readFile(join(SHARED, json), 'utf8'));
      const t0 = performance.now();
      const ck = await Checkpoint.open(p);
      const expected = await expectedFromShapesJson(join(SHARED, json));
      checkKeys(ck, expected, { what: file });
      const ms = performance.now() - t0;
      expect(ck.size).toBe(count);
      expect(ms).toBeLessThan(1000);
      const bytes = ck.keys().reduce((s, k) => s + ck.info(k).end - ck.info(k).begin, 0);
      expect(bytes).toBe(meta.bytes_f32 ?? meta.bytes_bf16);
      expect(size).toBeGreaterThan(bytes);
      await ck.close();
    }
  });

  test('sharded Qwen2.5-VL (729 tensors over 5 shards + index)', async () => {
    const q = join(dir, 'Qwen2.5-VL-7B-Instruct');
    const params = await shapesJsonEntries(join(SHARED, 'real_shapes_qwen/params.json'));
    const { shards } = await writeFakeShardedQwen(q, params);
    expect(shards.length).toBe(5);
    const t0 = performance.now();
    const ck = await Checkpoint.open(q);
    checkKeys(ck, await expectedFromShapesJson(join(SHARED, 'real_shapes_qwen/params.json')), { what: 'Qwen2.5-VL' });
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(ck.size).toBe(729);
    expect(ck.files.length).toBe(5);
    expect(ck.info('lm_head.weight').dtype).toBe('BF16');
    // a read from a sparse shard gives zeros
    expect(Array.from(await ck.readF32('model.norm.weight')).every((v) => v === 0)).toBe(true);
    // the index file itself opens too
    const ck2 = await Checkpoint.open(join(q, 'model.safetensors.index.json'));
    expect(ck2.size).toBe(729);
    await ck2.close();
    await ck.close();
  });

  test('a removed key, a changed shape and an extra key are named; ignore() and the 20-name cap', async () => {
    const json = join(SHARED, 'real_shapes/dit_step1x-edit-i1258.json');
    const entries = await shapesJsonEntries(json);
    const expected = await expectedFromShapesJson(json);
    const edited = entries
      .filter((e) => e.name !== 'double_blocks.7.img_attn.qkv.bias')
      .map((e) => (e.name === 'final_layer.linear.weight' ? { ...e, shape: [64, 3000] } : e));
    edited.push({ name: 'extra.thing', dtype: 'BF16', shape: [3] });
    const p = join(dir, 'dit-edited.safetensors');
    await writeHeaderOnlyFake(p, edited);
    const ck = await Checkpoint.open(p);
    const msg = await expectWeightsError(() => checkKeys(ck, expected, { what: 'DiT checkpoint' }), /^DiT checkpoint .*dit-edited\.safetensors does not match the model: /);
    expect(msg).toContain('1 missing: double_blocks.7.img_attn.qkv.bias [9216]');
    expect(msg).toContain('1 wrong shape: final_layer.linear.weight is [64,3000], expected [64,3072]');
    expect(msg).toContain('1 unexpected: extra.thing [3]');
    // ignoring the names makes it pass
    const ign = new Set(['double_blocks.7.img_attn.qkv.bias', 'final_layer.linear.weight', 'extra.thing']);
    checkKeys(ck, expected, { ignore: (n) => ign.has(n) });
    await ck.close();
    // many missing keys: counts plus at most 20 names
    const p2 = join(dir, 'dit-half.safetensors');
    await writeHeaderOnlyFake(p2, entries.filter((e) => !e.name.startsWith('single_blocks.')));
    const ck2 = await Checkpoint.open(p2);
    const msg2 = await expectWeightsError(() => checkKeys(ck2, expected), /\d+ missing: single_blocks\.0\..*\(\d+ more\)/);
    expect(msg2.split(', ').length).toBeLessThanOrEqual(22);
    await ck2.close();
  });
});

describe('checkpoint directories', () => {
  test('the tiny e2e Qwen (2 shards) reads the same bytes as the shard itself', async () => {
    const q = join(SHARED, 'tiny_e2e/model/Qwen2.5-VL-7B-Instruct');
    expect(existsSync(join(q, 'model.safetensors.index.json'))).toBe(true);
    const ck = await Checkpoint.open(q);
    const index = JSON.parse(await readFile(join(q, 'model.safetensors.index.json'), 'utf8'));
    expect(new Set(ck.keys())).toEqual(new Set(Object.keys(index.weight_map)));
    const name = 'visual.blocks.0.attn.proj.weight';
    const direct = await SafetensorsFile.open(join(q, index.weight_map[name]));
    expect(Array.from(await ck.readF32(name))).toEqual(Array.from(await direct.readF32(name)));
    await direct.close();
    await ck.close();
  });

  test('a directory with one .safetensors; missing path; openFiles with a duplicate name', async () => {
    const d = join(dir, 'one');
    await (await import('node:fs/promises')).mkdir(d);
    await writeSafetensors(join(d, 'w.safetensors'), { a: { dtype: 'F32', shape: [1], data: Float32Array.of(3) } });
    const ck = await Checkpoint.open(d);
    expect(Array.from(await ck.readF32('a'))).toEqual([3]);
    await expectWeightsError(() => ck.info('b'), /checkpoint has no tensor "b"/);
    await ck.close();
    await expectWeightsError(() => Checkpoint.open(join(dir, 'nope')), /nope: no such file or directory/);
    await expectWeightsError(() => Checkpoint.openFiles([join(d, 'w.safetensors'), join(d, 'w.safetensors')]), /tensor "a" is in both/);
  });

  test('broken directories give one error each', async () => {
    const cases = (await writeMalformedCases(join(dir, 'malformed'))).filter((c) => !c.path.endsWith('.safetensors'));
    expect(cases.length).toBeGreaterThanOrEqual(8);
    for (const c of cases) {
      const err = await Checkpoint.open(c.path).then(
        () => new Error(`${c.id}: opened`),
        (e: unknown) => e,
      );
      if (!(err instanceof Step1xError) || !c.expect.test(err.message) || err.code !== c.code)
        throw new Error(`${c.id}: got ${String(err)} (code ${(err as Step1xError).code}), want ${c.expect} code ${c.code}`);
    }
  });

  test('shapes lists: plain {name: shape} objects and bad entries', async () => {
    const p = join(dir, 'shapes.json');
    await writeFile(p, JSON.stringify({ a: [1, 2], b: [] }));
    expect([...(await expectedFromShapesJson(p))]).toEqual([['a', [1, 2]], ['b', []]]);
    await writeFile(p, JSON.stringify({ tensors: [{ name: 'a', shape: [-1] }] }));
    await expect(expectedFromShapesJson(p)).rejects.toThrow(/entry 0 is not \{name, shape\}/);
  });
});

describe('loadWeight / Linear on the GPU', () => {
  const N = 5, K = 7, M = 3;
  const w = randn(N * K, 11);
  const b = randn(N, 12);
  const x = randn(M * K, 13);

  test('bf16 stays packed, f16 stays f16, f32; as f32 widens; shape check', async () => {
    const g = await getGpu();
    const p = join(dir, 'w.safetensors');
    await writeSafetensors(p, {
      'a.weight': { dtype: 'BF16', shape: [N, K], data: f32ArrayToBf16(w) },
      'a.bias': { dtype: 'BF16', shape: [N], data: f32ArrayToBf16(b) },
      'h.weight': { dtype: 'F16', shape: [N, K], data: f32ArrayToF16(w) },
      'f.weight': { dtype: 'F32', shape: [N, K], data: w },
      'f.bias': { dtype: 'F32', shape: [N], data: b },
      'd.weight': { dtype: 'F64', shape: [N, K], data: Float64Array.from(w) },
    });
    const ck = await Checkpoint.open(p);
    const tb = await loadWeight(g, ck, 'a.weight');
    expect(tb.dtype).toBe('bf16');
    expect(Array.from(await g.readF32(tb))).toEqual(Array.from(bf16ArrayToF32(f32ArrayToBf16(w))));
    const th = await loadWeight(g, ck, 'h.weight');
    expect(th.dtype).toBe('f16');
    expect(Array.from(await g.readF32(th))).toEqual(Array.from(f16ArrayToF32(f32ArrayToF16(w))));
    const tw = await loadWeight(g, ck, 'a.weight', { as: 'f32' });
    expect(tw.dtype).toBe('f32');
    expect(Array.from(await g.readF32(tw))).toEqual(Array.from(roundToBf16(w)));
    const td = await loadWeight(g, ck, 'd.weight');
    expect(td.dtype).toBe('f32');
    expect(Array.from(await g.readF32(td))).toEqual(Array.from(w));
    await expectWeightsError(() => loadWeight(g, ck, 'f.weight', { shape: [K, N] }), /"f.weight" has shape \[5,7\], the model expects \[7,5\]/);
    for (const t of [tb, th, tw, td]) t.dispose();
    await ck.close();
  });

  test('Linear.load + forward (bf16 and f32 weights) vs f64 reference', async () => {
    const g = await getGpu();
    const ck = await Checkpoint.open(join(dir, 'w.safetensors'));
    const xt = g.upload(x, [1, M, K]);
    for (const [prefix, wr, br] of [
      ['a', roundToBf16(w), roundToBf16(b)],
      ['f', w, b],
    ] as const) {
      const lin = await Linear.load(g, ck, prefix, { shape: [N, K] });
      expect(lin.bias).toBeDefined();
      expect([lin.outFeatures, lin.inFeatures]).toEqual([N, K]);
      const y = lin.forward(xt);
      expect(y.shape).toEqual([1, M, N]);
      const ref = new Float64Array(M * N);
      for (let m = 0; m < M; m++)
        for (let n = 0; n < N; n++) {
          let s = br[n];
          for (let k = 0; k < K; k++) s += x[m * K + k] * wr[n * K + k];
          ref[m * N + n] = s;
        }
      expectClose(`linear ${prefix}`, await g.readF32(y), ref, 1e-5, 1e-5);
      y.dispose();
      lin.dispose();
    }
    // no bias in the checkpoint, bias required → error naming it
    const h = await Linear.load(g, ck, 'h');
    expect(h.bias).toBeUndefined();
    h.dispose();
    await expectWeightsError(() => Linear.load(g, ck, 'h', { bias: true }), /no tensor "h.bias"/);
    xt.dispose();
    await ck.close();
  });
});

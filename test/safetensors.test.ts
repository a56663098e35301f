/**
 * safetensors reader/writer: round trip of every dtype, header layout as the reference writer makes it,
 * reading files written by the reference (Python) writer, lazy positional reads on a 25 GB sparse fake,
 * and one clear Step1xError for each of ≥ 20 malformed files.
 */
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors, ST_DTYPE_BYTES, type StDType } from '../src/io/safetensors.js';
import { Step1xError, ExitCode } from '../src/errors.js';
import { f32ArrayToBf16, f32ArrayToF16, roundToBf16 } from '../src/runtime/half.js';
import { writeHeaderOnlyFake, writeMalformedCases } from './util/fake-checkpoint.js';
import { goldenCase } from './util/golden-path.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'step1x-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const vals = Float32Array.from([0, 1, -2.5, 3.25, 100, -0.125, 7]);

describe('writeSafetensors / SafetensorsFile round trip', () => {
  test('every dtype reads back through readF32 / readBytes / readI64AsNumber', async () => {
    const p = join(dir, 'all.safetensors');
    const n = vals.length;
    await writeSafetensors(
      p,
      {
        f32: { dtype: 'F32', shape: [n], data: vals },
        f64: { dtype: 'F64', shape: [1, n], data: Float64Array.from(vals) },
        bf16: { dtype: 'BF16', shape: [n], data: f32ArrayToBf16(vals) },
        f16: { dtype: 'F16', shape: [n, 1], data: f32ArrayToF16(vals) },
        i64: { dtype: 'I64', shape: [n], data: BigInt64Array.from([0n, 1n, -2n, 3n, 100n, -9007199254740991n, 7n]) },
        i32: { dtype: 'I32', shape: [n], data: Int32Array.from([0, 1, -2, 3, 100, -7, 7]) },
        i16: { dtype: 'I16', shape: [n], data: Int16Array.from([0, 1, -2, 3, 100, -7, 7]) },
        i8: { dtype: 'I8', shape: [n], data: Int8Array.from([0, 1, -2, 3, 100, -7, 7]) },
        u8: { dtype: 'U8', shape: [n], data: Uint8Array.from([0, 1, 2, 3, 100, 255, 7]) },
        bool: { dtype: 'BOOL', shape: [n], data: Uint8Array.from([0, 1, 1, 0, 1, 0, 1]) },
        scalar: { dtype: 'F32', shape: [], data: Float32Array.of(42) },
        empty: { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      },
      { format: 'pt', note: 'ünïcode' },
    );
    const f = await SafetensorsFile.open(p);
    try {
      expect(f.metadata).toEqual({ format: 'pt', note: 'ünïcode' });
      expect(f.tensors.size).toBe(12);
      expect(Array.from(await f.readF32('f32'))).toEqual(Array.from(vals));
      expect(Array.from(await f.readF32('f64'))).toEqual(Array.from(vals));
      expect(Array.from(await f.readF32('bf16'))).toEqual(Array.from(roundToBf16(vals)));
      expect(Array.from(await f.readF32('f16'))).toEqual(Array.from(vals)); // all exactly representable
      expect(Array.from(await f.readI64AsNumber('i64'))).toEqual([0, 1, -2, 3, 100, -9007199254740991, 7]);
      expect(Array.from(await f.readF32('i32'))).toEqual([0, 1, -2, 3, 100, -7, 7]);
      expect(Array.from(await f.readF32('i16'))).toEqual([0, 1, -2, 3, 100, -7, 7]);
      expect(Array.from(await f.readF32('i8'))).toEqual([0, 1, -2, 3, 100, -7, 7]);
      expect(Array.from(await f.readI64AsNumber('u8'))).toEqual([0, 1, 2, 3, 100, 255, 7]);
      expect(Array.from(await f.readF32('bool'))).toEqual([0, 1, 1, 0, 1, 0, 1]);
      expect(Array.from(await f.readF32('scalar'))).toEqual([42]);
      expect((await f.readF32('empty')).length).toBe(0);
      await expect(f.readI32('i64')).rejects.toThrow(/-9007199254740991 at 5 does not fit int32/);
      expect((await f.readBytes('u8')).length).toBe(n);
      // rows of dim 0: f64 is [1, n], i32 is [n]
      expect(Array.from(new Int32Array((await f.readRowsBytes('i32', 2, 3)).buffer))).toEqual([-2, 3, 100]);
      await expect(f.readRowsBytes('i32', 5, 3)).rejects.toThrow(/rows \[5, 8\) out of range for "i32" \[7\]/);
      await expect(f.readF32('nope')).rejects.toThrow(/no tensor named "nope"/);
      // layout like the reference writer: header padded with spaces to 8, tensors sorted by element size then
      // name, each aligned to its element size
      const raw = await readFile(p);
      const hl = Number(raw.readBigUInt64LE(0));
      expect(hl % 8).toBe(0);
      expect(/^ *$/.test(raw.subarray(8, 8 + hl).toString('utf8').replace(/^\{.*\}/s, ''))).toBe(true);
      for (const t of f.tensors.values()) expect((t.begin - 8 - hl) % ST_DTYPE_BYTES[t.dtype]).toBe(0);
      expect([...f.tensors.values()].sort((a, b) => a.begin - b.begin).map((t) => t.name).slice(0, 2)).toEqual(['f64', 'i64']);
    } finally {
      await f.close();
    }
    await expect(f.readF32('f32')).rejects.toThrow(/read after close/);
  });

  test('the writer is atomic and validates sizes', async () => {
    const p = join(dir, 'atomic.safetensors');
    await writeSafetensors(p, { a: { dtype: 'F32', shape: [2], data: Float32Array.of(1, 2) } });
    const err = await writeSafetensors(p, { a: { dtype: 'F32', shape: [3], data: Float32Array.of(1, 2) } }).catch((e) => e);
    expect(err).toBeInstanceOf(Step1xError);
    expect(err.message).toMatch(/tensor "a" F32\[3\] needs 12 bytes, data has 8/);
    // the old file is intact and no temp file is left behind
    const f = await SafetensorsFile.open(p);
    expect(Array.from(await f.readF32('a'))).toEqual([1, 2]);
    await f.close();
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
    const err2 = await writeSafetensors(join(dir, 'no/such/dir/x.safetensors'), {}).catch((e) => e);
    expect(err2.code).toBe(ExitCode.OUTPUT);
  });
});

describe('files from the reference (Python) writer', () => {
  test('golden vae_tiny io.safetensors and weights parse and read', async () => {
    const caseDir = goldenCase('vae_tiny'); // in-repo copy: throws (fails) when missing
    const f = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
    try {
      const caseJson = JSON.parse(await readFile(join(caseDir, 'case.json'), 'utf8'));
      const names = Object.keys(caseJson.tensors);
      expect(new Set(f.keys())).toEqual(new Set(names));
      for (const n of names) {
        const info = f.info(n);
        expect(info.shape).toEqual(caseJson.tensors[n].shape);
        if (info.dtype === 'F32') {
          const v = await f.readF32(n);
          expect(v.length).toBe(info.shape.reduce((a, b) => a * b, 1));
          expect(v.every(Number.isFinite)).toBe(true);
        }
      }
    } finally {
      await f.close();
    }
  });
});

describe('writer matches the reference writer byte for byte', () => {
  test('re-writing golden files (F32/I64/U8/BF16, metadata) gives identical bytes', async () => {
    const files = [
      ['vae_tiny', 'io.safetensors'],
      ['qwen_vl_tiny', 'io.safetensors'],
      ['tiny_e2e', 'io.safetensors'],
      ['tiny_e2e', 'model/step1x-edit-i1258.safetensors'],
      ['tiny_e2e', 'model/Qwen2.5-VL-7B-Instruct/model-00002-of-00002.safetensors'],
    ];
    let checked = 0;
    for (const [c, rel] of files) {
      const src = join(goldenCase(c), rel);
      if (!existsSync(src)) throw new Error(`${src}: golden file missing (test/golden is part of the repository)`);
      const f = await SafetensorsFile.open(src);
      const t: Record<string, { dtype: StDType; shape: number[]; data: Uint8Array }> = {};
      for (const [n, i] of f.tensors) t[n] = { dtype: i.dtype, shape: i.shape, data: await f.readBytes(n) };
      await f.close();
      const out = join(dir, 'rewrite.safetensors');
      await writeSafetensors(out, t, Object.keys(f.metadata).length ? f.metadata : undefined);
      const [a, b] = [await readFile(src), await readFile(out)];
      if (!a.equals(b)) throw new Error(`${src}: rewrite differs (${a.length} vs ${b.length} bytes)`);
      checked++;
    }
    expect(checked).toBe(files.length);
  });
});

describe('lazy reads', () => {
  test('a 25 GB sparse fake opens instantly and one tensor reads without touching the rest', async () => {
    const p = join(dir, 'huge.safetensors');
    const entries = [
      { name: 'big', dtype: 'BF16' as StDType, shape: [3_000_000, 4096] }, // 24.6 GB of holes
      { name: 'small', dtype: 'F32' as StDType, shape: [5] },
    ];
    const size = await writeHeaderOnlyFake(p, entries);
    expect(size).toBeGreaterThan(24e9);
    expect((await stat(p)).size).toBe(size);
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    const f = await SafetensorsFile.open(p);
    const small = await f.readF32('small');
    const ms = performance.now() - t0;
    await f.close();
    expect(Array.from(small)).toEqual([0, 0, 0, 0, 0]);
    expect(ms).toBeLessThan(1000);
    expect(process.memoryUsage().rss - rss0).toBeLessThan(200e6);
  });
});

describe('concurrent and failing reads', () => {
  test('parallel positional reads do not interfere; a file truncated after open fails by name', async () => {
    const p = join(dir, 'par.safetensors');
    const t: Record<string, { dtype: StDType; shape: number[]; data: Float32Array }> = {};
    for (let i = 0; i < 16; i++) t[`t${i}`] = { dtype: 'F32', shape: [i + 1, 3], data: Float32Array.from({ length: 3 * (i + 1) }, (_, j) => i * 1000 + j) };
    await writeSafetensors(p, t);
    const f = await SafetensorsFile.open(p);
    const got = await Promise.all(Object.keys(t).map((n) => f.readF32(n)));
    got.forEach((g, i) => expect(Array.from(g)).toEqual(Array.from(t[`t${i}`].data)));
    await truncate(p, 100);
    await expect(f.readF32('t15')).rejects.toThrow(/par\.safetensors: unexpected end of file at byte \d+/);
    await f.close();
  });
});

test('a "__proto__" metadata key stays a plain own key', async () => {
  const p = join(dir, 'proto.safetensors');
  const h = Buffer.from('{"__metadata__":{"__proto__":"x","format":"pt"}}');
  const b = Buffer.alloc(8 + h.length);
  b.writeBigUInt64LE(BigInt(h.length));
  h.copy(b, 8);
  await writeFile(p, b);
  const f = await SafetensorsFile.open(p);
  expect(Object.keys(f.metadata)).toEqual(['__proto__', 'format']);
  expect(Object.getPrototypeOf(f.metadata)).toBe(Object.prototype);
  await f.close();
});

describe('malformed files', () => {
  test('each gives one Step1xError naming the file, the tensor and the problem', async () => {
    const cases = await writeMalformedCases(join(dir, 'malformed'));
    expect(cases.filter((c) => c.path.endsWith('.safetensors')).length).toBeGreaterThanOrEqual(20);
    for (const c of cases) {
      if (!c.path.endsWith('.safetensors')) continue; // directories: checkpoint.test.ts
      const t0 = performance.now();
      const err = await SafetensorsFile.open(c.path).then(
        () => new Error(`${c.id}: opened without error`),
        (e: unknown) => e,
      );
      const ms = performance.now() - t0;
      if (!(err instanceof Step1xError)) throw new Error(`${c.id}: expected Step1xError, got ${String(err)}`);
      if (!c.expect.test(err.message) || !err.message.includes(c.path) || err.message.includes('\n'))
        throw new Error(`${c.id}: message ${JSON.stringify(err.message)} does not match ${c.expect}`);
      expect(err.code).toBe(ExitCode.USAGE);
      expect(ms).toBeLessThan(1000);
    }
    expect(existsSync(cases[0].path)).toBe(true);
  });
});

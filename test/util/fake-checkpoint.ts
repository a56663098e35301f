/**
 * Header-only fake checkpoints: a valid safetensors header followed by a SPARSE data section
 * (fs.truncate extends the file without writing), so a 25 GB fake of the real DiT costs a few KB on
 * disk and opens instantly. Reading a tensor from it gives zeros.
 */
import { mkdir, open, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildHeader, numelOfShape, ST_DTYPE_BYTES, type HeaderEntry } from '../../src/io/safetensors.js';

/** Write `path` with this header and a sparse data section of the full logical size. Returns the file size. */
export async function writeHeaderOnlyFake(path: string, entries: HeaderEntry[], metadata: Record<string, string> = { format: 'pt' }): Promise<number> {
  const { prefix, dataBytes } = buildHeader(entries, metadata);
  const fh = await open(path, 'w');
  try {
    await fh.write(prefix, 0, prefix.length, 0);
  } finally {
    await fh.close();
  }
  const total = prefix.length + dataBytes;
  await truncate(path, total);
  return total;
}

/**
 * A Hugging Face style sharded checkpoint in `dir`: `model-0000i-of-0000N.safetensors` (header-only
 * fakes) and `model.safetensors.index.json`. Tensors go to shards in order, a new shard starting when
 * one would pass `maxShardBytes` (the hub's Qwen2.5-VL-7B uses 5 shards of ≈ 4 GB).
 */
export async function writeFakeShardedQwen(dir: string, params: HeaderEntry[], maxShardBytes = 4e9): Promise<{ shards: string[]; index: string }> {
  await mkdir(dir, { recursive: true });
  const groups: HeaderEntry[][] = [[]];
  let acc = 0;
  for (const p of params) {
    const b = numelOfShape(p.shape) * ST_DTYPE_BYTES[p.dtype];
    if (acc + b > maxShardBytes && groups[groups.length - 1].length) {
      groups.push([]);
      acc = 0;
    }
    groups[groups.length - 1].push(p);
    acc += b;
  }
  const n = groups.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const shards: string[] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let i = 0; i < n; i++) {
    const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
    shards.push(name);
    await writeHeaderOnlyFake(join(dir, name), groups[i]);
    for (const p of groups[i]) {
      weightMap[p.name] = name;
      totalSize += numelOfShape(p.shape) * ST_DTYPE_BYTES[p.dtype];
    }
  }
  const index = join(dir, 'model.safetensors.index.json');
  await writeFile(index, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  return { shards, index };
}

// ---- malformed files, as a new user might feed them to step1x ----------------------------------------

export interface MalformedCase {
  /** Short id, also the file name. */
  id: string;
  /** File or directory to open. */
  path: string;
  /** What the one-line error must say (besides naming the file). */
  expect: RegExp;
  /** Exit code the CLI must return. */
  code: number;
}

/** [u64 n][header][data]; `n` defaults to the header's length. */
function rawSafetensors(header: string | Uint8Array, dataBytes = 0, n?: bigint): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, n ?? BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

const entry = (dtype: string, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });

/** Write ≥ 20 malformed safetensors files / checkpoint directories into `dir`. Codes: 2 = USAGE, 4 = WEIGHTS. */
export async function writeMalformedCases(dir: string): Promise<MalformedCase[]> {
  await mkdir(dir, { recursive: true });
  const cases: MalformedCase[] = [];
  const file = async (id: string, bytes: Uint8Array, expect: RegExp, code = 2) => {
    const path = join(dir, `${id}.safetensors`);
    await writeFile(path, bytes);
    cases.push({ id, path, expect, code });
  };
  const hdr = (o: unknown, data = 64) => rawSafetensors(JSON.stringify(o), data);
  await file('empty', new Uint8Array(0), /0 bytes, shorter than the 8-byte header length/);
  await file('truncated-length', Uint8Array.from([16, 0, 0, 0, 0]), /5 bytes, shorter than the 8-byte/);
  await file('header-past-eof', rawSafetensors('{"a":1}', 0, 1000n), /header length 1000 runs past the end of the file/);
  await file('absurd-header-length', rawSafetensors('{}', 0, 1n << 62n), /header length 4611686018427387904 is absurd/);
  await file('zero-header-length', rawSafetensors('', 16, 0n), /header length 0 is too short/);
  await file('not-json', rawSafetensors('this is not json at all', 8), /header is not JSON/);
  await file('not-utf8', rawSafetensors(Uint8Array.from([0x7b, 0xff, 0xfe, 0x7d]), 8), /header is not valid UTF-8/);
  await file('header-array', rawSafetensors('[1, 2, 3]'), /header is not a JSON object \(got an array\)/);
  await file('header-string', rawSafetensors('"weights"'), /header is not a JSON object \(got string\)/);
  await file('unknown-dtype', hdr({ w: entry('F4', [4], [0, 16]) }), /tensor "w": unknown dtype "F4"/);
  await file('range-past-eof', hdr({ w: entry('F32', [100], [0, 400]) }, 16), /tensor "w": byte range \[0, 400\) runs past the end of the data section \(16 bytes/);
  await file('overlap', hdr({ a: entry('F32', [4], [0, 16]), b: entry('F32', [4], [8, 24]) }), /tensors "a" \[0, 16\) and "b" \[8, 24\) overlap/);
  await file('size-mismatch', hdr({ w: entry('F32', [2, 2], [0, 8]) }), /tensor "w": shape \[2,2\] F32 needs 16 bytes but data_offsets \[0, 8\] hold 8/);
  await file('negative-dim', hdr({ w: entry('F32', [-1, 4], [0, 16]) }), /tensor "w": shape \[-1,4\] has a dimension -1 that is not a non-negative integer/);
  await file('fractional-dim', hdr({ w: entry('F32', [1.5, 2], [0, 12]) }), /tensor "w": shape \[1.5,2\] has a dimension 1.5/);
  await file('shape-not-array', hdr({ w: entry('F32', '2x2', [0, 16]) }), /tensor "w": shape "2x2" is not an array/);
  await file('reversed-offsets', hdr({ w: entry('F32', [0], [16, 0]) }), /tensor "w": data_offsets \[16, 0\] are reversed/);
  await file('offsets-missing', hdr({ w: { dtype: 'F32', shape: [4] } }), /tensor "w": entry has no "data_offsets"/);
  await file('offsets-negative', hdr({ w: entry('F32', [1], [-4, 0]) }), /tensor "w": data_offsets \[-4,0\] are not non-negative integers/);
  await file('absurd-shape', hdr({ w: entry('F32', [1e9, 1e9, 1e9], [0, 16]) }), /tensor "w": shape \[1000000000,1000000000,1000000000\] is absurdly large/);
  await file('entry-not-object', hdr({ w: 5 }), /tensor "w": entry is not an object/);
  await file('metadata-not-map', hdr({ __metadata__: { format: 1 }, w: entry('F32', [1], [0, 4]) }), /__metadata__ entry "format" is 1, not a string/);
  await file('metadata-array', hdr({ __metadata__: ['pt'] }), /__metadata__ is not a string-to-string map/);

  // directories
  const sub = async (id: string, files: Record<string, string | Uint8Array>, expect: RegExp, code = 2) => {
    const d = join(dir, id);
    await mkdir(d, { recursive: true });
    for (const [n, c] of Object.entries(files)) await writeFile(join(d, n), c);
    cases.push({ id, path: d, expect, code });
  };
  const good = hdr({ a: entry('F32', [4], [0, 16]) }, 16);
  await sub('dir-index-not-json', { 'model.safetensors.index.json': '{"weight_map": {', 'model-00001-of-00001.safetensors': good }, /model\.safetensors\.index\.json: not a valid JSON index/);
  await sub('dir-index-no-weight-map', { 'model.safetensors.index.json': '{"metadata": {}}' }, /"weight_map" is missing/);
  await sub(
    'dir-index-missing-shard',
    { 'model.safetensors.index.json': JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }), 'model-00001-of-00002.safetensors': good },
    /shard listed in model\.safetensors\.index\.json not found: model-00002-of-00002\.safetensors/,
    4,
  );
  await sub(
    'dir-index-wrong-shard',
    { 'model.safetensors.index.json': JSON.stringify({ weight_map: { a: 's1.safetensors', ghost: 's1.safetensors' } }), 's1.safetensors': good },
    /1 tensor the index maps to this shard is not in it: ghost/,
    4,
  );
  await sub('dir-index-escapes', { 'model.safetensors.index.json': JSON.stringify({ weight_map: { a: '../x.safetensors' } }) }, /points outside the directory/);
  await sub('dir-broken-shard', { 'model.safetensors.index.json': JSON.stringify({ weight_map: { a: 's1.safetensors' } }), 's1.safetensors': 'garbage!!' }, /s1\.safetensors: not a valid safetensors file: header length \d+ is absurd/);
  await sub('dir-empty', { 'README.md': 'nothing here' }, /no \.safetensors file or \*\.safetensors\.index\.json/, 4);
  await sub('dir-ambiguous', { 'a.safetensors': good, 'b.safetensors': good }, /2 \.safetensors files \(a\.safetensors, b\.safetensors\) and no \*\.safetensors\.index\.json/);
  return cases;
}

/**
 * safetensors reader / writer. Format: [u64 LE n][n bytes UTF-8 JSON header][data section].
 * Header: { "__metadata__"?: {string: string}, name: { dtype, shape, data_offsets: [begin, end] } }
 * with offsets relative to the data section.
 *
 * The reader validates the whole header before it allocates anything sized by the file (a 25 GB
 * checkpoint costs one header read), and then reads one tensor's byte range on demand with a
 * positional read: never the whole file. Every malformed file gives one Step1xError (ExitCode.USAGE)
 * naming the file, the tensor and the problem.
 */
import { open as fsOpen, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { bf16ArrayToF32, f16ArrayToF32 } from '../runtime/half.js';
import { decodeFp8Array, dequantizeBlocks } from './quant.js';
import { applyQuantLayout, type QuantInfo } from './quant-layout.js';
import { LOAD_CHUNK_BYTES, readChunks, readFully } from './chunk-reader.js';

export { LOAD_CHUNK_BYTES } from './chunk-reader.js';

export type StDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const ST_DTYPE_BYTES: Record<StDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export function isStDType(s: unknown): s is StDType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(ST_DTYPE_BYTES, s);
}

export interface TensorInfo {
  name: string;
  dtype: StDType;
  shape: number[];
  /** Absolute file byte offsets [begin, end). */
  begin: number;
  end: number;
  file: string;
  /** A q8 / q4 tensor of a `step1x convert` file: logical `shape` [N, K], codes as stored, its scale. */
  quant?: QuantInfo;
}

/** The reference implementation's limit is 100 MB; a bigger header is certainly not a checkpoint. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** One positional read at most this long (FileHandle.read takes an int32 length). */
const READ_CHUNK = 1 << 30;

function bad(file: string, msg: string): never {
  throw new Step1xError(`${file}: not a valid safetensors file: ${msg}`, ExitCode.USAGE);
}

export function numelOfShape(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Validate one header entry; returns its info with offsets relative to the data section. */
function parseEntry(file: string, name: string, v: unknown): TensorInfo {
  const where = `tensor "${name}"`;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(file, `${where}: entry is not an object`);
  const e = v as Record<string, unknown>;
  for (const k of ['dtype', 'shape', 'data_offsets']) if (!(k in e)) bad(file, `${where}: entry has no "${k}"`);
  if (!isStDType(e.dtype))
    bad(file, `${where}: unknown dtype ${JSON.stringify(e.dtype)} (expected one of ${Object.keys(ST_DTYPE_BYTES).join('/')})`);
  if (!Array.isArray(e.shape)) bad(file, `${where}: shape ${JSON.stringify(e.shape)} is not an array`);
  for (const d of e.shape)
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      bad(file, `${where}: shape ${JSON.stringify(e.shape)} has a dimension ${JSON.stringify(d)} that is not a non-negative integer`);
  const shape = e.shape as number[];
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2) bad(file, `${where}: data_offsets ${JSON.stringify(offs)} is not [begin, end]`);
  const [begin, end] = offs as unknown[];
  if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < 0)
    bad(file, `${where}: data_offsets ${JSON.stringify(offs)} are not non-negative integers`);
  if (begin > end) bad(file, `${where}: data_offsets [${begin}, ${end}] are reversed (begin > end)`);
  const size = ST_DTYPE_BYTES[e.dtype];
  const numel = numelOfShape(shape);
  if (!Number.isSafeInteger(numel * size)) bad(file, `${where}: shape ${fmtShape(shape)} is absurdly large`);
  if (end - begin !== numel * size)
    bad(file, `${where}: shape ${fmtShape(shape)} ${e.dtype} needs ${numel * size} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  return { name, dtype: e.dtype, shape: [...shape], begin, end, file };
}

/** Parse and validate a header (the JSON bytes only). Offsets in the result are absolute. */
export function parseHeader(file: string, headerBytes: Uint8Array, dataStart: number, fileSize: number): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    bad(file, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    bad(file, `header is not JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    bad(file, `header is not a JSON object (got ${Array.isArray(json) ? 'an array' : json === null ? 'null' : typeof json})`);
  let metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  const dataLen = fileSize - dataStart;
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(file, '__metadata__ is not a string-to-string map');
      for (const [k, s] of Object.entries(v as Record<string, unknown>))
        if (typeof s !== 'string') bad(file, `__metadata__ entry "${k}" is ${JSON.stringify(s)}, not a string`);
      metadata = Object.fromEntries(Object.entries(v as Record<string, string>)); // own keys only, even "__proto__"

      continue;
    }
    const t = parseEntry(file, name, v);
    if (t.end > dataLen)
      bad(file, `tensor "${name}": byte range [${t.begin}, ${t.end}) runs past the end of the data section (${dataLen} bytes; file truncated?)`);
    list.push(t);
  }
  // Ranges must not overlap (zero-length tensors may sit anywhere).
  const sorted = list.filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++)
    if (sorted[i].begin < sorted[i - 1].end)
      bad(file, `tensors "${sorted[i - 1].name}" [${sorted[i - 1].begin}, ${sorted[i - 1].end}) and "${sorted[i].name}" [${sorted[i].begin}, ${sorted[i].end}) overlap`);
  const tensors = new Map<string, TensorInfo>();
  for (const t of list) tensors.set(t.name, { ...t, begin: t.begin + dataStart, end: t.end + dataStart });
  return { tensors, metadata };
}

export class SafetensorsFile {
  private fh: FileHandle | null;

  private constructor(
    readonly path: string,
    fh: FileHandle,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
    readonly fileSize: number,
  ) {
    this.fh = fh;
  }

  static async open(path: string): Promise<SafetensorsFile> {
    let fh: FileHandle;
    try {
      fh = await fsOpen(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new Step1xError(
        code === 'ENOENT' ? `${path}: no such file` : `${path}: cannot open (${(e as Error).message})`,
        code === 'ENOENT' ? ExitCode.WEIGHTS : ExitCode.USAGE,
      );
    }
    try {
      const st = await fh.stat();
      if (st.isDirectory()) throw new Step1xError(`${path}: is a directory, not a safetensors file`, ExitCode.USAGE);
      const size = st.size;
      if (size < 8) bad(path, `file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = new Uint8Array(8);
      await readFully(fh, path, lenBuf, 0);
      const n64 = new DataView(lenBuf.buffer).getBigUint64(0, true);
      if (n64 > BigInt(MAX_HEADER_BYTES)) bad(path, `header length ${n64} is absurd (limit ${MAX_HEADER_BYTES} bytes)`);
      const n = Number(n64);
      if (n > size - 8) bad(path, `header length ${n} runs past the end of the file (${size} bytes; truncated?)`);
      if (n < 2) bad(path, `header length ${n} is too short for a JSON object`);
      const header = new Uint8Array(n);
      await readFully(fh, path, header, 8);
      const { tensors, metadata } = parseHeader(path, header, 8 + n, size);
      applyQuantLayout(path, tensors, metadata);
      return new SafetensorsFile(path, fh, tensors, metadata, size);
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new Step1xError(`${this.path}: no tensor named "${name}"`, ExitCode.WEIGHTS);
    return t;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  /** The raw bytes of one tensor (positional read of its range only). Offset 0 of a fresh buffer. */
  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return this.readRange(t.begin, t.end - t.begin);
  }

  /** Rows [start, start+count) along dim 0 of one tensor, raw bytes (e.g. a few embedding rows). */
  async readRowsBytes(name: string, start: number, count: number): Promise<Uint8Array> {
    const t = this.info(name);
    const rows = t.shape[0] ?? 1;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > rows)
      throw new Step1xError(`${this.path}: rows [${start}, ${start + count}) out of range for "${name}" ${fmtShape(t.shape)}`, ExitCode.USAGE);
    const rowBytes = rows ? (t.end - t.begin) / rows : 0;
    return this.readRange(t.begin + start * rowBytes, count * rowBytes);
  }

  /**
   * Bytes [pos, pos + len) in consecutive chunks of `chunkBytes` (the last may be shorter), each a view of
   * a reused read buffer that is valid until the next iteration: the read of chunk k+1 is in flight while
   * the caller uploads or converts chunk k (double buffering), and no buffer is allocated per tensor
   * (fresh host memory costs page faults; on some VMs those, not the disk, bound the load speed).
   */
  async *readChunks(pos: number, len: number, chunkBytes = LOAD_CHUNK_BYTES): AsyncGenerator<Uint8Array> {
    if (!this.fh) throw new Step1xError(`${this.path}: read after close()`, ExitCode.USAGE);
    yield* readChunks(this.fh, this.path, pos, len, chunkBytes);
  }

  /** One tensor's raw bytes in chunks of `chunkBytes` (see readChunks). */
  tensorChunks(name: string, chunkBytes = LOAD_CHUNK_BYTES): AsyncGenerator<Uint8Array> {
    const t = this.info(name);
    return this.readChunks(t.begin, t.end - t.begin, chunkBytes);
  }

  /** Bytes [at, at + dst.length) of tensor `name` into `dst` (a caller's buffer: upload memory when loading). */
  async readTensorInto(name: string, dst: Uint8Array, at: number): Promise<void> {
    const t = this.info(name);
    if (at < 0 || at + dst.length > t.end - t.begin)
      throw new Step1xError(`${this.path}: bytes [${at}, ${at + dst.length}) out of range for "${name}" (${t.end - t.begin} bytes)`, ExitCode.USAGE);
    if (!this.fh) throw new Step1xError(`${this.path}: read after close()`, ExitCode.USAGE);
    await readFully(this.fh, this.path, dst, t.begin + at);
  }

  async readRange(pos: number, len: number): Promise<Uint8Array> {
    if (!this.fh) throw new Step1xError(`${this.path}: read after close()`, ExitCode.USAGE);
    const buf = new Uint8Array(len);
    await readFully(this.fh, this.path, buf, pos);
    return buf;
  }

  /** One tensor as f32 (F32/F16/BF16/F8_E4M3/F8_E5M2/F64/I64/I32/I16/I8/U8/BOOL; q8 / q4 dequantized). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    if (t.quant) {
      const sb = await this.readRange(t.quant.scale.begin, t.quant.scale.end - t.quant.scale.begin);
      const scales = new Uint16Array(sb.buffer, 0, sb.length / 2);
      return dequantizeBlocks({ data: await this.readBytes(name), scales }, t.shape[0], t.shape[1], t.quant.format, t.quant.block);
    }
    return bytesToF32(this.path, t, await this.readBytes(name));
  }

  /** Integer tensors (ids, grids, masks): I64 as exact doubles (|v| < 2^53), narrower ints as Int32Array. */
  async readI64AsNumber(name: string): Promise<Float64Array | Int32Array> {
    const t = this.info(name);
    const b = await this.readBytes(name);
    const n = numelOfShape(t.shape);
    if (t.dtype === 'I64') {
      const v = new BigInt64Array(b.buffer, 0, n);
      const out = new Float64Array(n);
      for (let i = 0; i < n; i++) out[i] = Number(v[i]);
      return out;
    }
    if (['I32', 'I16', 'I8', 'U8', 'BOOL'].includes(t.dtype)) return Int32Array.from(bytesToF32(this.path, t, b));
    throw new Step1xError(`${this.path}: tensor "${name}" is ${t.dtype}, not an integer tensor`, ExitCode.USAGE);
  }

  /** Integer tensor as Int32Array; values outside int32 are an error. */
  async readI32(name: string): Promise<Int32Array> {
    const v = await this.readI64AsNumber(name);
    if (v instanceof Int32Array) return v;
    const out = new Int32Array(v.length);
    for (let i = 0; i < v.length; i++) {
      if (v[i] !== (v[i] | 0)) throw new Step1xError(`${this.path}: tensor "${name}" value ${v[i]} at ${i} does not fit int32`, ExitCode.USAGE);
      out[i] = v[i];
    }
    return out;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

/** Convert a tensor's raw little-endian bytes (fresh buffer at offset 0) to f32. */
export function bytesToF32(file: string, t: TensorInfo, b: Uint8Array): Float32Array {
  const n = numelOfShape(t.shape);
  const buf = b.byteOffset % 8 === 0 ? b.buffer : b.slice().buffer;
  const off = b.byteOffset % 8 === 0 ? b.byteOffset : 0;
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(buf, off, n);
    case 'F16':
      return f16ArrayToF32(new Uint16Array(buf, off, n));
    case 'BF16':
      return bf16ArrayToF32(new Uint16Array(buf, off, n));
    case 'F64':
      return Float32Array.from(new Float64Array(buf, off, n));
    case 'I64': {
      const v = new BigInt64Array(buf, off, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = Number(v[i]);
      return out;
    }
    case 'I32':
      return Float32Array.from(new Int32Array(buf, off, n));
    case 'I16':
      return Float32Array.from(new Int16Array(buf, off, n));
    case 'I8':
      return Float32Array.from(new Int8Array(buf, off, n));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(new Uint8Array(buf, off, n));
    case 'F8_E4M3':
      return decodeFp8Array(new Uint8Array(buf, off, n), 'fp8_e4m3');
    case 'F8_E5M2':
      return decodeFp8Array(new Uint8Array(buf, off, n), 'fp8_e5m2');
    default:
      throw new Step1xError(`${file}: tensor "${t.name}" has dtype ${t.dtype}, which readF32 does not convert`, ExitCode.USAGE);
  }
}

// ---- writer -----------------------------------------------------------------------------------------

export interface HeaderEntry {
  name: string;
  dtype: StDType;
  shape: number[];
}

/**
 * The on-disk header for these tensors: 8-byte length + JSON padded with spaces to a multiple of 8
 * (as the reference writer does, so every tensor is aligned). Tensors are laid out in the order given.
 * Returns the prefix bytes and each tensor's [begin, end) relative to the data section.
 */
export function buildHeader(entries: HeaderEntry[], metadata?: Record<string, string>): { prefix: Uint8Array; offsets: [number, number][]; dataBytes: number } {
  const obj: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) obj.__metadata__ = metadata;
  const offsets: [number, number][] = [];
  let pos = 0;
  const seen = new Set<string>();
  for (const e of entries) {
    if (e.name === '__metadata__' || seen.has(e.name)) throw new Step1xError(`writeSafetensors: duplicate or reserved tensor name "${e.name}"`, ExitCode.USAGE);
    seen.add(e.name);
    if (!isStDType(e.dtype)) throw new Step1xError(`writeSafetensors: tensor "${e.name}" has unknown dtype ${e.dtype}`, ExitCode.USAGE);
    if (!e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new Step1xError(`writeSafetensors: tensor "${e.name}" has invalid shape ${fmtShape(e.shape)}`, ExitCode.USAGE);
    const bytes = numelOfShape(e.shape) * ST_DTYPE_BYTES[e.dtype];
    offsets.push([pos, pos + bytes]);
    obj[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [pos, pos + bytes] };
    pos += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const n = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + n).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(n), true);
  prefix.set(json, 8);
  return { prefix, offsets, dataBytes: pos };
}

export type WriteTensor = { dtype: StDType; shape: number[]; data: ArrayBufferView };

/**
 * Write a safetensors file atomically: a temp file in the same directory, then rename over `path`.
 * Tensors are sorted by element size (largest first) then name, like the reference writer, so every
 * tensor starts aligned to its element size; the output is byte-identical to what Python's
 * `safetensors.save_file` writes for the same tensors and metadata (test/safetensors.test.ts checks it).
 */
export async function writeSafetensors(path: string, tensors: Record<string, WriteTensor>, metadata?: Record<string, string>): Promise<void> {
  const names = Object.keys(tensors).sort((a, b) => ST_DTYPE_BYTES[tensors[b].dtype] - ST_DTYPE_BYTES[tensors[a].dtype] || (a < b ? -1 : a > b ? 1 : 0));
  const entries = names.map((name) => ({ name, dtype: tensors[name].dtype, shape: tensors[name].shape }));
  const { prefix, offsets } = buildHeader(entries, metadata);
  names.forEach((name, i) => {
    const want = offsets[i][1] - offsets[i][0];
    if (tensors[name].data.byteLength !== want)
      throw new Step1xError(`writeSafetensors: tensor "${name}" ${tensors[name].dtype}${fmtShape(tensors[name].shape)} needs ${want} bytes, data has ${tensors[name].data.byteLength}`, ExitCode.USAGE);
  });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
  let fh: FileHandle | null = null;
  try {
    fh = await fsOpen(tmp, 'w');
    await fh.write(prefix, 0, prefix.length, 0);
    let pos = prefix.length;
    for (const name of names) {
      const d = tensors[name].data;
      const u8 = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      for (let o = 0; o < u8.length; o += READ_CHUNK) {
        const len = Math.min(READ_CHUNK, u8.length - o);
        await fh.write(u8, o, len, pos);
        pos += len;
      }
    }
    await fh.close();
    fh = null;
    await rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (e instanceof Step1xError) throw e;
    throw new Step1xError(`cannot write ${path}: ${(e as Error).message}`, ExitCode.OUTPUT);
  }
}


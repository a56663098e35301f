/**
 * A tiny PNG chunk reader/writer for the text chunks step1x stores its parameters in.
 * Reads only chunk headers and text chunks (positional reads; pixel data is skipped), validates the
 * signature, chunk lengths and the CRC of every chunk it reads. Writer side: `encodeITXtChunk` builds
 * an uncompressed UTF-8 iTXt chunk and `insertPngChunks` puts chunks just before IEND.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { inflateSync } from 'node:zlib';
import { ExitCode, Step1xError } from '../errors.js';

export const PNG_SIGNATURE = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export interface PngTextChunk {
  type: 'tEXt' | 'zTXt' | 'iTXt';
  keyword: string;
  text: string;
  /** iTXt only. */
  languageTag?: string;
  translatedKeyword?: string;
}

export interface PngInfo {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlaced: boolean;
  fileSize: number;
  /** Chunk types in file order (IDAT runs collapsed). */
  chunks: string[];
  text: PngTextChunk[];
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Uint8Array, crc = 0xffffffff): number {
  for (let i = 0; i < data.length; i++) crc = CRC_TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return crc >>> 0;
}
const crcFinal = (c: number) => (c ^ 0xffffffff) >>> 0;

/** A complete chunk: length, type, data, CRC over type + data. */
export function encodeChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crcFinal(crc32(out.subarray(4, 8 + data.length))));
  return out;
}

/** An uncompressed iTXt chunk (UTF-8 text; keyword 1–79 Latin-1 characters, no NUL). */
export function encodeITXtChunk(keyword: string, text: string): Uint8Array {
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || keyword !== keyword.trim() || keyword.includes('  '))
    throw new Step1xError(`PNG text keyword "${keyword}" must be 1-79 printable Latin-1 characters`, ExitCode.USAGE);
  const kw = Uint8Array.from(keyword, (c) => c.charCodeAt(0));
  const body = new TextEncoder().encode(text);
  // keyword \0 compression-flag(0) compression-method(0) language-tag \0 translated-keyword \0 text
  const data = new Uint8Array(kw.length + 5 + body.length);
  data.set(kw, 0);
  data.set(body, kw.length + 5);
  return encodeChunk('iTXt', data);
}

/** Insert chunks right before IEND of an in-memory PNG. */
export function insertPngChunks(png: Uint8Array, chunks: Uint8Array[]): Uint8Array {
  const iend = png.length - 12;
  const type = String.fromCharCode(...png.subarray(iend + 4, iend + 8));
  if (iend < 8 || type !== 'IEND') throw new Step1xError('insertPngChunks: PNG does not end with IEND', ExitCode.USAGE);
  const extra = chunks.reduce((s, c) => s + c.length, 0);
  const out = new Uint8Array(png.length + extra);
  out.set(png.subarray(0, iend), 0);
  let p = iend;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  out.set(png.subarray(iend), p);
  return out;
}

/**
 * Largest inflated text we accept from one zTXt / compressed iTXt chunk. A 1 MB chunk can inflate to
 * gigabytes; zlib stops at this many output bytes, so memory stays bounded whatever the file says.
 */
export const MAX_INFLATED_TEXT = 4 << 20;

/** Largest total of text (all chunks, inflated) one PNG may hold. */
export const MAX_TOTAL_TEXT = 16 << 20;

function inflateText(d: Uint8Array, bad: (m: string) => never): Buffer {
  try {
    return inflateSync(d, { maxOutputLength: MAX_INFLATED_TEXT });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError)
      return bad(`compressed text inflates to more than ${MAX_INFLATED_TEXT >> 20} MiB (a decompression bomb?); refused`);
    return bad('compressed text does not inflate');
  }
}

/** ISO-8859-1 (Node's 'latin1'; WHATWG TextDecoder would give windows-1252). */
const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');

function decodeText(path: string, type: string, d: Uint8Array): PngTextChunk {
  const bad = (m: string): never => {
    throw new Step1xError(`${path}: malformed ${type} chunk: ${m}`, ExitCode.INPUT);
  };
  const z = d.indexOf(0);
  if (z < 1 || z > 79) bad('keyword missing or longer than 79 bytes');
  const keyword = latin1(d.subarray(0, z));
  if (type === 'tEXt') return { type, keyword, text: latin1(d.subarray(z + 1)) };
  if (type === 'zTXt') {
    if (d[z + 1] !== 0) bad(`unknown compression method ${d[z + 1]}`);
    return { type, keyword, text: latin1(inflateText(d.subarray(z + 2), bad)) };
  }
  // iTXt
  const flag = d[z + 1];
  const method = d[z + 2];
  const l = d.indexOf(0, z + 3);
  if (l < 0) bad('language tag not terminated');
  const t = d.indexOf(0, l + 1);
  if (t < 0) bad('translated keyword not terminated');
  let body = d.subarray(t + 1);
  if (flag === 1) {
    if (method !== 0) bad(`unknown compression method ${method}`);
    body = inflateText(body, bad);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return bad('text is not UTF-8');
  }
  return { type: 'iTXt', keyword, text, languageTag: latin1(d.subarray(z + 3, l)), translatedKeyword: new TextDecoder().decode(d.subarray(l + 1, t)) };
}

async function readAt(fh: FileHandle, pos: number, len: number): Promise<Uint8Array> {
  const b = new Uint8Array(len);
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(b, done, len - done, pos + done);
    if (!bytesRead) break;
    done += bytesRead;
  }
  return done === len ? b : b.subarray(0, done);
}

/** Size, format and text chunks of a PNG file. More than 16 MiB of text (raw or inflated) is refused. */
export async function readPngInfo(path: string): Promise<PngInfo> {
  const bad = (m: string): never => {
    throw new Step1xError(`${path}: not a valid PNG: ${m}`, ExitCode.INPUT);
  };
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new Step1xError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, ExitCode.INPUT);
  }
  try {
    const size = (await fh.stat()).size;
    const sig = await readAt(fh, 0, 8);
    if (sig.length < 8 || !sig.every((b, i) => b === PNG_SIGNATURE[i])) bad('missing PNG signature');
    const info: PngInfo = { width: 0, height: 0, bitDepth: 0, colorType: 0, interlaced: false, fileSize: size, chunks: [], text: [] };
    let pos = 8;
    let textBytes = 0;
    for (;;) {
      const h = await readAt(fh, pos, 8);
      if (h.length < 8) bad(`file ends at byte ${pos} without an IEND chunk`);
      const len = new DataView(h.buffer).getUint32(0);
      const type = latin1(h.subarray(4, 8));
      if (!/^[A-Za-z]{4}$/.test(type)) bad(`chunk at byte ${pos} has invalid type ${JSON.stringify(type)}`);
      if (len > 0x7fffffff || pos + 12 + len > size) bad(`chunk ${type} at byte ${pos} (length ${len}) runs past the end of the file`);
      if (info.chunks.length === 0 && type !== 'IHDR') bad(`first chunk is ${type}, not IHDR`);
      if (info.chunks[info.chunks.length - 1] !== type || type !== 'IDAT') info.chunks.push(type);
      const wanted = type === 'IHDR' || type === 'tEXt' || type === 'zTXt' || type === 'iTXt';
      if (wanted) {
        if (len > MAX_TOTAL_TEXT) bad(`${type} chunk of ${len} bytes is too large`);
        const body = await readAt(fh, pos + 4, len + 8); // type + data + crc
        const data = body.subarray(4, 4 + len);
        const crc = new DataView(body.buffer).getUint32(4 + len);
        if (crcFinal(crc32(body.subarray(0, 4 + len))) !== crc) bad(`chunk ${type} at byte ${pos} has a bad CRC`);
        if (type === 'IHDR') {
          if (len !== 13) bad(`IHDR length ${len} is not 13`);
          const dv = new DataView(data.buffer, data.byteOffset, 13);
          info.width = dv.getUint32(0);
          info.height = dv.getUint32(4);
          info.bitDepth = data[8];
          info.colorType = data[9];
          info.interlaced = data[12] === 1;
        } else {
          const t = decodeText(path, type, data);
          textBytes += t.text.length;
          if (textBytes > MAX_TOTAL_TEXT) bad(`text chunks hold more than ${MAX_TOTAL_TEXT >> 20} MiB in total; refused`);
          info.text.push(t);
        }
      }
      pos += 12 + len;
      if (type === 'IEND') break;
    }
    return info;
  } finally {
    await fh.close();
  }
}

/** The tEXt / zTXt / iTXt chunks of a PNG file, in file order. */
export async function readPngTextChunks(path: string): Promise<PngTextChunk[]> {
  return (await readPngInfo(path)).text;
}

/** True if the file starts with the PNG signature. */
export async function isPngFile(path: string): Promise<boolean> {
  try {
    const fh = await open(path, 'r');
    try {
      const sig = await readAt(fh, 0, 8);
      return sig.length === 8 && sig.every((b, i) => b === PNG_SIGNATURE[i]);
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  }
}

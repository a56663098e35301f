/**
 * Image files ↔ RGB u8 `{width, height, data: [H, W, 3]}`.
 *
 * Decoding (PNG, JPEG, WebP, GIF, TIFF, AVIF, ... whatever sharp/libvips reads) with sharp, matching
 * what the official code gets from `PIL.Image.open(path).convert("RGB")`:
 *  - JPEG: sharp's libjpeg(-turbo/mozjpeg) decoder gives the same pixels as Pillow's;
 *  - alpha is DROPPED, not composited (Pillow's RGBA→RGB convert keeps the straight colour values);
 *    grey / grey+alpha are replicated to three channels (Pillow L→RGB);
 *  - no colour management: embedded ICC profiles are ignored (`ignoreIcc`), as Pillow ignores them;
 *  - EXIF orientation: honoured by default (what users expect); `ignoreExif: true` reproduces the
 *    official pixels (PIL.Image.open does not rotate);
 *  - the header is checked BEFORE any pixel is decoded: 0×0 and images over `maxPixels` are rejected
 *    with Step1xError(ExitCode.INPUT) naming the file; truncated / corrupt data fails fast with the
 *    decoder's reason.
 * Known differences to Pillow (documented, rare for photos): CMYK JPEGs (libvips converts with a
 * CMYK profile, Pillow with a naive formula) and 16-bit PNGs (rounding of the 16→8 bit reduction).
 *
 * Encoding: PNG with pngjs (8-bit RGB), optional UTF-8 iTXt chunks, atomic write (tmp + rename).
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import sharp from 'sharp';
import type { Metadata, OutputInfo } from 'sharp';
import { PNG } from 'pngjs';
import { Step1xError, ExitCode } from '../errors.js';
import { encodeITXtChunk, insertPngChunks } from './png-text.js';
import type { RgbImage } from './resize.js';

export type { RgbImage } from './resize.js';

/** Default size limit: 100 megapixels (≈ 300 MB as RGB u8 — far beyond what the model uses). */
export const DEFAULT_MAX_PIXELS = 100_000_000;

export interface DecodeOptions {
  /** do not apply the EXIF orientation (reproduces the official code's pixels) */
  ignoreExif?: boolean;
  /** reject images with more pixels than this (checked from the header, before decoding) */
  maxPixels?: number;
  /** name used in error messages (file path, '-' for stdin) */
  name?: string;
}

export interface DecodedImage extends RgbImage {
  /** container format as sharp reports it ('jpeg', 'png', 'webp', ...) */
  format: string;
  /** the EXIF orientation tag (1 when absent) and whether it was applied */
  orientation: number;
  orientationApplied: boolean;
}

function inputError(name: string, msg: string): Step1xError {
  return new Step1xError(`${name}: ${msg}`, ExitCode.INPUT);
}

/** Decode an encoded image held in memory. */
export async function decodeImage(buf: Uint8Array, opts: DecodeOptions = {}): Promise<DecodedImage> {
  const name = opts.name ?? '<buffer>';
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (buf.length === 0) throw inputError(name, 'empty file, not an image');
  const input = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);

  // 0. PNG IHDR sniff: libpng reports a 0-sized IHDR only as a "corrupt header"
  if (input.length >= 24 && input.readUInt32BE(0) === 0x89504e47 && input.toString('latin1', 12, 16) === 'IHDR') {
    const pw = input.readUInt32BE(16), ph = input.readUInt32BE(20);
    if (pw === 0 || ph === 0) throw inputError(name, `image has an empty size ${pw}x${ph}`);
  }
  // 1. header only
  let meta: Metadata;
  try {
    meta = await sharp(input, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw inputError(name, `not a readable image (${cleanSharpMessage(e)}); supported: PNG, JPEG, WebP, GIF, TIFF, AVIF`);
  }
  const w = meta.width ?? 0;
  const h = meta.height ?? 0;
  if (!(w > 0 && h > 0)) throw inputError(name, `image has an empty size ${w}x${h}`);
  if (w * h > maxPixels)
    throw inputError(
      name,
      `image is ${w}x${h} = ${(w * h / 1e6).toFixed(1)} megapixels, over the limit of ${(maxPixels / 1e6).toFixed(1)} megapixels; downscale it first`,
    );
  const orientation = meta.orientation ?? 1;
  const applyOrientation = !opts.ignoreExif && orientation !== 1;

  // 2. pixels
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await sharp(input, {
      limitInputPixels: maxPixels,
      failOn: 'error', // truncated or corrupt data is an error; libjpeg warnings Pillow also ignores are not
      ignoreIcc: true,
      autoOrient: applyOrientation,
    })
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw inputError(name, `cannot decode ${meta.format ?? 'image'} data (${cleanSharpMessage(e)}); is the file truncated or corrupt?`);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  if (src.length !== width * height * channels)
    throw inputError(name, `decoder returned ${src.length} bytes for ${width}x${height}x${channels}`);
  const data = new Uint8Array(width * height * 3);
  const n = width * height;
  if (channels === 3) data.set(src);
  else if (channels === 4) {
    for (let i = 0; i < n; i++) {
      data[i * 3] = src[i * 4];
      data[i * 3 + 1] = src[i * 4 + 1];
      data[i * 3 + 2] = src[i * 4 + 2];
    }
  } else if (channels === 1 || channels === 2) {
    for (let i = 0; i < n; i++) data[i * 3] = data[i * 3 + 1] = data[i * 3 + 2] = src[i * channels];
  } else throw inputError(name, `unsupported channel count ${channels}`);
  return { width, height, data, format: meta.format ?? 'unknown', orientation, orientationApplied: applyOrientation };
}

/** Read and decode an image file; '-' reads the whole of stdin. */
export async function readImage(path: string, opts: DecodeOptions = {}): Promise<DecodedImage> {
  const name = opts.name ?? (path === '-' ? '<stdin>' : path);
  let buf: Buffer;
  if (path === '-') buf = await readStdin(name);
  else {
    try {
      buf = await readFile(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw inputError(
        name,
        code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not an image' : `cannot read (${(e as Error).message})`,
      );
    }
  }
  return decodeImage(buf, { ...opts, name });
}

async function readStdin(name: string): Promise<Buffer> {
  if (process.stdin.isTTY) throw inputError(name, "no image piped to stdin (use '-' only with a pipe or redirect)");
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function cleanSharpMessage(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  // libvips repeats its error lines; keep each once, on one line
  return [...new Set(m.split('\n').map((s) => s.trim()).filter(Boolean))].join('; ');
}

export interface PngOptions {
  /** extra iTXt chunks (UTF-8), keyword → text */
  text?: Record<string, string>;
}

/** Encode an RGB u8 image as an 8-bit RGB PNG (iTXt chunks before IEND). */
export function encodePng(img: RgbImage, opts: PngOptions = {}): Uint8Array {
  const { width, height, data } = img;
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0) || data.length !== width * height * 3)
    throw new Step1xError(
      `encodePng: image ${width}x${height} has ${data.length} bytes, expected [${height},${width},3]`,
      ExitCode.USAGE,
    );
  const png = new PNG({ width, height, colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  png.data = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bytes = PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  const chunks = Object.entries(opts.text ?? {}).map(([k, v]) => encodeITXtChunk(k, v));
  return chunks.length ? insertPngChunks(bytes, chunks) : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Write bytes atomically: a temporary file in the same directory, then rename over `path`. */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now().toString(36)}.tmp`);
  try {
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw new Step1xError(`${path}: cannot write (${(e as Error).message})`, ExitCode.OUTPUT);
  }
}

/** Encode and write a PNG atomically. */
export async function writePng(path: string, img: RgbImage, opts: PngOptions = {}): Promise<void> {
  await writeFileAtomic(path, encodePng(img, opts));
}

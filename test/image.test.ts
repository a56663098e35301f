/**
 * Image decoding / encoding: golden pixels (PNG exact; JPEG exact when the Step1X example photo is
 * available), alpha dropped like Pillow's convert("RGB"), EXIF orientation, bad inputs failing fast
 * with clear Step1xError(INPUT) messages, PNG iTXt round trip and atomic writes.
 */
import { describe, expect, test, afterAll } from '@jest/globals';
import { join } from 'node:path';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { PNG } from 'pngjs';
import sharp from 'sharp';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { decodeImage, encodePng, readImage, writePng } from '../src/io/image.js';
import { readPngTextChunks } from '../src/io/png-text.js';
import { inputProcessImage } from '../src/models/qwen25vl/processor.js';
import { ExitCode, Step1xError } from '../src/errors.js';
import { goldenCase } from './util/golden-path.js';
import { testUnless } from './util/skip.js';

const tmp = mkdtempSync(join(tmpdir(), 'step1x-img-'));
const files: SafetensorsFile[] = [];
afterAll(async () => {
  for (const f of files) await f.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** a PNG header (signature + IHDR with the right CRC) claiming w×h, followed by nothing */
function pngHeaderOnly(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
  const body = Buffer.concat([Buffer.from('IHDR'), ihdr]);
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  let crc = 0xffffffff;
  for (const b of body) crc = crcTable[(crc ^ b) & 0xff] ^ (crc >>> 8);
  const len = Buffer.alloc(4); len.writeUInt32BE(13);
  const crcB = Buffer.alloc(4); crcB.writeUInt32BE((crc ^ 0xffffffff) >>> 0);
  // a few bytes of (garbage) IDAT and an IEND, so that header parsers reach the pixel data
  const chunk = (type: string, data: Buffer) => {
    const b = Buffer.concat([Buffer.from(type), data]);
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    const l = Buffer.alloc(4); l.writeUInt32BE(data.length);
    const cc = Buffer.alloc(4); cc.writeUInt32BE((c ^ 0xffffffff) >>> 0);
    return Buffer.concat([l, b, cc]);
  };
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), len, body, crcB,
    chunk('IDAT', Buffer.from([0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01])), chunk('IEND', Buffer.alloc(0))]);
}

async function expectInputError(p: Promise<unknown>, re: RegExp): Promise<number> {
  const t0 = performance.now();
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  const ms = performance.now() - t0;
  if (process.env.SHOW_ERRORS) console.log(`${ms.toFixed(0)} ms: ${(err as Error)?.message}`);
  expect(err).toBeInstanceOf(Step1xError);
  expect((err as Step1xError).code).toBe(ExitCode.INPUT);
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toMatch(/\n/);
  expect(ms).toBeLessThan(1000);
  return ms;
}

describe('decode matches the goldens', () => {
  test('pipeline_tiny input.png == in.photo_u8', async () => {
    const dir = goldenCase('pipeline_tiny');
    const img = await readImage(join(dir, 'input.png'));
    const f = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    files.push(f);
    const ref = await f.readBytes('in.photo_u8');
    expect([img.height, img.width]).toEqual(f.tensors.get('in.photo_u8')!.shape.slice(0, 2));
    expect(Buffer.compare(Buffer.from(img.data), Buffer.from(ref))).toBe(0);
  });

  // The official example photo is not part of the repo (1.4 MB); set STEP1X_EXAMPLES to a checkout's
  // examples/ directory to run this JPEG check.
  const jpg = join(process.env.STEP1X_EXAMPLES ?? '/nonexistent', '0000.jpg');
  testUnless(existsSync(jpg) ? undefined : `${jpg} not found: set STEP1X_EXAMPLES to a Step1X-Edit checkout's examples/ (the photo is not in the repo)`, 'examples/0000.jpg → input_process_image(512) == qwen_processor in.photo0000.image_u8', async () => {
    const img = await readImage(jpg);
    expect([img.width, img.height, img.format]).toEqual([1024, 1536, 'jpeg']);
    const ref = inputProcessImage(img, 512);
    const f = await SafetensorsFile.open(join(goldenCase('qwen_processor'), 'io.safetensors'));
    files.push(f);
    const gold = await f.readBytes('in.photo0000.image_u8');
    let n = 0;
    for (let i = 0; i < gold.length; i++) if (gold[i] !== ref.data[i]) n++;
    expect(n).toBe(0);
  });
});

describe('pixel conventions', () => {
  test('RGBA: alpha dropped without compositing (Pillow convert("RGB")); grey replicated', async () => {
    const png = new PNG({ width: 3, height: 1 });
    png.data = Buffer.from([10, 20, 30, 0, 200, 100, 50, 128, 1, 2, 3, 255]);
    const img = await decodeImage(PNG.sync.write(png));
    expect(Array.from(img.data)).toEqual([10, 20, 30, 200, 100, 50, 1, 2, 3]);
    const grey = await sharp(Buffer.from([0, 77, 255]), { raw: { width: 3, height: 1, channels: 1 } }).png().toBuffer();
    expect(Array.from((await decodeImage(grey)).data)).toEqual([0, 0, 0, 77, 77, 77, 255, 255, 255]);
  });

  test('EXIF orientation honoured by default, ignored with ignoreExif', async () => {
    // 2 wide × 1 high, orientation 6 (rotate 90° clockwise to display)
    const jpg = await sharp(Buffer.from([255, 0, 0, 0, 0, 255]), { raw: { width: 2, height: 1, channels: 3 } })
      .jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toBuffer();
    const a = await decodeImage(jpg);
    expect([a.width, a.height, a.orientation, a.orientationApplied]).toEqual([1, 2, 6, true]);
    const b = await decodeImage(jpg, { ignoreExif: true });
    expect([b.width, b.height, b.orientationApplied]).toEqual([2, 1, false]);
  });

  test('EXIF orientations 3, 6, 8 rotate the pixels (checked against a rotation written here); ignoreExif keeps the stored order', async () => {
    // 48 × 32 of 16 × 16 blocks in six colours (block edges on the JPEG's 16-px MCU grid, so decoded blocks stay flat)
    const W = 48, H = 32, colours = [[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20], [20, 240, 240], [240, 20, 240]];
    const raw = Buffer.alloc(W * H * 3);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) raw.set(colours[Math.floor(y / 16) * 3 + Math.floor(x / 16)], (y * W + x) * 3);
    /** Display order of a stored [h, w] image under an EXIF orientation: 3 = 180°, 6 = 90° clockwise, 8 = 90° counter-clockwise. */
    const orient = (d: Uint8Array, w: number, h: number, o: number) => {
      const [ow, oh] = o === 3 ? [w, h] : [h, w];
      const out = new Uint8Array(d.length);
      for (let y = 0; y < oh; y++)
        for (let x = 0; x < ow; x++) {
          const [sx, sy] = o === 3 ? [w - 1 - x, h - 1 - y] : o === 6 ? [y, h - 1 - x] : [w - 1 - y, x];
          out.set(d.subarray((sy * w + sx) * 3, (sy * w + sx) * 3 + 3), (y * ow + x) * 3);
        }
      return { width: ow, height: oh, data: out };
    };
    for (const o of [3, 6, 8]) {
      const jpg = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).jpeg({ quality: 100 }).withMetadata({ orientation: o }).toBuffer();
      const stored = await decodeImage(jpg, { ignoreExif: true });
      expect([stored.width, stored.height, stored.orientation, stored.orientationApplied]).toEqual([W, H, o, false]);
      // the stored pixels are the blocks as written (JPEG ±6)
      for (const [x, y, c] of [[8, 8, 0], [40, 8, 2], [8, 24, 3], [40, 24, 5]] as const)
        for (let k = 0; k < 3; k++) expect(Math.abs(stored.data[(y * W + x) * 3 + k] - colours[c][k])).toBeLessThanOrEqual(6);
      const shown = await decodeImage(jpg);
      const want = orient(stored.data, W, H, o);
      expect([shown.width, shown.height, shown.orientationApplied]).toEqual([want.width, want.height, true]);
      let differ = 0;
      for (let i = 0; i < want.data.length; i++) if (want.data[i] !== shown.data[i]) differ++;
      if (differ) throw new Error(`orientation ${o}: ${differ} of ${want.data.length} values differ from the rotated stored pixels`);
    }
  });

  test('embedded ICC profile: no colour transform', async () => {
    const raw = Buffer.from([200, 30, 60, 10, 250, 90]);
    const tagged = await sharp(raw, { raw: { width: 2, height: 1, channels: 3 } }).withIccProfile('p3').png().toBuffer();
    expect((await sharp(tagged).metadata()).icc).toBeDefined();
    // the values stored in the file (pngjs ignores iCCP), RGBA → RGB
    const stored = Array.from(PNG.sync.read(tagged).data).filter((_, i) => i % 4 !== 3);
    expect(Array.from((await decodeImage(tagged)).data)).toEqual(stored);
  });
});

describe('bad inputs fail fast with a clear error', () => {
  test('truncated PNG', async () => {
    const img = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 37) % 251) };
    const full = encodePng(img);
    const p = join(tmp, 'trunc.png');
    writeFileSync(p, full.subarray(0, Math.floor(full.length * 0.6)));
    await expectInputError(readImage(p), /trunc\.png: .*(truncated|corrupt)/);
  });
  test('corrupt JPEG', async () => {
    const jpg = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#884422' } }).jpeg().toBuffer();
    const bad = Buffer.from(jpg);
    for (let i = 200; i < bad.length - 2; i++) bad[i] = 0xff; // garbage entropy data
    const p = join(tmp, 'bad.jpg');
    writeFileSync(p, bad);
    await expectInputError(readImage(p), /bad\.jpg: /);
    writeFileSync(p, jpg.subarray(0, 100));
    await expectInputError(readImage(p), /bad\.jpg: /);
    // headers intact, entropy-coded data cut short
    const noisy = await sharp(Buffer.from(new Uint8Array(96 * 96 * 3).map((_, i) => (i * 7919) % 256)), { raw: { width: 96, height: 96, channels: 3 } }).jpeg().toBuffer();
    writeFileSync(p, noisy.subarray(0, Math.floor(noisy.length * 0.6)));
    await expectInputError(readImage(p), /bad\.jpg: cannot decode jpeg data/);
  });
  test('0×0 header', async () => {
    const p = join(tmp, 'zero.png');
    writeFileSync(p, pngHeaderOnly(0, 0));
    await expectInputError(readImage(p), /zero\.png: image has an empty size 0x0/);
  });
  test('50000×50000 header is rejected before decoding', async () => {
    const p = join(tmp, 'huge.png');
    writeFileSync(p, pngHeaderOnly(50000, 50000));
    await expectInputError(readImage(p), /huge\.png: image is 50000x50000 = 2500\.0 megapixels, over the limit/);
  });
  test('missing file, empty file, not an image', async () => {
    await expectInputError(readImage(join(tmp, 'nope.png')), /nope\.png: no such file/);
    writeFileSync(join(tmp, 'empty.png'), '');
    await expectInputError(readImage(join(tmp, 'empty.png')), /empty file/);
    writeFileSync(join(tmp, 'text.png'), 'hello, I am not a picture');
    await expectInputError(readImage(join(tmp, 'text.png')), /text\.png: not a readable image/);
  });
});

describe('PNG encoding', () => {
  test('round trip with UTF-8 iTXt chunks, atomic write leaves no temp files', async () => {
    const img = { width: 5, height: 3, data: new Uint8Array(45).map((_, i) => i * 5) };
    const p = join(tmp, 'out.png');
    await writePng(p, img, { text: { step1x: '{"prompt":"把文字改成“你好”"}', Software: 'step1x' } });
    const back = await readImage(p);
    expect(Array.from(back.data)).toEqual(Array.from(img.data));
    const chunks = await readPngTextChunks(p);
    expect(chunks.find((c) => c.keyword === 'step1x')?.text).toBe('{"prompt":"把文字改成“你好”"}');
    expect(readdirSync(tmp).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    await expect(writePng(join(tmp, 'no', 'such', 'dir.png'), img)).rejects.toThrow(/cannot write/);
  });

  test("stdin ('-') is read whole as a Buffer", async () => {
    const png = encodePng({ width: 2, height: 2, data: new Uint8Array(12).fill(9) });
    const orig = Object.getOwnPropertyDescriptor(process, 'stdin')!;
    // a piped stdin delivering the file in two pieces
    const fake = Readable.from([Buffer.from(png.subarray(0, 20)), Buffer.from(png.subarray(20))]);
    Object.defineProperty(process, 'stdin', { value: fake, configurable: true });
    try {
      const img = await readImage('-');
      expect([img.width, img.height, img.data[0]]).toEqual([2, 2, 9]);
    } finally {
      Object.defineProperty(process, 'stdin', orig);
    }
  });
});

/** `step1x download` machinery against a local HTTP server on loopback: resume, checksums, plan. */
import { createServer, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { downloadFile, modelDownloadPlan } from '../src/io/download.js';
import { ExitCode, Step1xError } from '../src/errors.js';

const payload = Buffer.alloc(300_000, 0);
for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
const sha = createHash('sha256').update(payload).digest('hex');
let server: Server;
let base = '';
let lastRange: string | undefined;
let corrupt = false;
/**
 * How the file server misbehaves: 'normal' (Range → 206, past the end → 416 with Content-Range, the SHA in
 * X-Linked-Etag); 'ignore-range' (always 200 with the whole body); 'short' (declares the full length, sends
 * the first SHORT bytes, closes); 'no-sha' (no checksum header); 'etag-sha' (the SHA in a weak ETag only).
 */
let mode: 'normal' | 'ignore-range' | 'short' | 'no-sha' | 'etag-sha' = 'normal';
const SHORT = 100_000;

beforeAll(async () => {
  server = createServer((req, res) => {
    const url = req.url ?? '';
    if (url.startsWith('/api/models/Qwen/Qwen2.5-VL-7B-Instruct')) {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ siblings: [{ rfilename: 'config.json' }, { rfilename: 'model-00001-of-00005.safetensors' }, { rfilename: 'README.md' }, { rfilename: 'sub/x.json' }] }));
      return;
    }
    if (!url.includes('/resolve/main/')) {
      res.statusCode = 404;
      res.end();
      return;
    }
    const body = corrupt ? Buffer.from(payload).fill(1, 0, 10) : payload;
    if (mode === 'etag-sha') res.setHeader('etag', `W/"${sha}"`);
    else if (mode !== 'no-sha') res.setHeader('x-linked-etag', `"${sha}"`);
    lastRange = req.headers.range;
    if (mode === 'short') {
      res.setHeader('content-length', String(body.length));
      res.write(body.subarray(0, SHORT), () => res.destroy());
      return;
    }
    const m = mode === 'ignore-range' ? null : /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) {
      const start = Number(m[1]);
      if (start >= body.length) {
        res.statusCode = 416;
        res.setHeader('content-range', `bytes */${body.length}`);
        res.end();
        return;
      }
      res.setHeader('content-range', `bytes ${start}-${body.length - 1}/${body.length}`);
      res.statusCode = 206;
      res.setHeader('content-length', String(body.length - start));
      res.end(body.subarray(start));
    } else {
      res.setHeader('content-length', String(body.length));
      res.end(body);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const addr = server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

test('downloads, verifies the sha256 and renames into place', async () => {
  corrupt = false;
  const dir = mkdtempSync(join(tmpdir(), 'dl-'));
  const dest = join(dir, 'vae.safetensors');
  await downloadFile({ repo: 'stepfun-ai/Step1X-Edit', file: 'vae.safetensors', dest }, undefined, base);
  expect(readFileSync(dest).equals(payload)).toBe(true);
  expect(existsSync(`${dest}.part`)).toBe(false);
});

test('resumes a partial download with a Range request', async () => {
  corrupt = false;
  const dir = mkdtempSync(join(tmpdir(), 'dl-'));
  const dest = join(dir, 'vae.safetensors');
  writeFileSync(`${dest}.part`, payload.subarray(0, 123_456));
  let resumed = false;
  await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, (p) => (resumed ||= p.resumed), base);
  expect(lastRange).toBe('bytes=123456-');
  expect(resumed).toBe(true);
  expect(readFileSync(dest).equals(payload)).toBe(true);
});

test('a checksum mismatch removes the partial file and names the file', async () => {
  corrupt = true;
  const dir = mkdtempSync(join(tmpdir(), 'dl-'));
  const dest = join(dir, 'vae.safetensors');
  await expect(downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, undefined, base)).rejects.toThrow(/checksum mismatch for vae.safetensors/);
  expect(existsSync(dest)).toBe(false);
  expect(existsSync(`${dest}.part`)).toBe(false);
  corrupt = false;
});

test('plan: the DiT of the version asked for (v1.1, v1.0), VAE and the top-level Qwen weight/config files', async () => {
  expect((await modelDownloadPlan('/m', base, 'v1.0'))[0].dest).toBe('/m/step1x-edit-i1258.safetensors');
  const plan = await modelDownloadPlan('/m', base, 'v1.1');
  expect(plan.map((p) => p.dest)).toEqual([
    '/m/step1x-edit-v1p1-official.safetensors',
    '/m/vae.safetensors',
    '/m/Qwen2.5-VL-7B-Instruct/config.json',
    '/m/Qwen2.5-VL-7B-Instruct/model-00001-of-00005.safetensors',
  ]);
});

// ---- the branches a real network takes ------------------------------------------------------------

function fresh(): { dir: string; dest: string } {
  corrupt = false;
  const dir = mkdtempSync(join(tmpdir(), 'dl-'));
  return { dir, dest: join(dir, 'vae.safetensors') };
}

afterEach(() => {
  mode = 'normal';
  corrupt = false;
});

test('a server that ignores Range (200 with the whole file): the part is rewritten, not appended to', async () => {
  const { dest } = fresh();
  writeFileSync(`${dest}.part`, payload.subarray(0, 123_456));
  mode = 'ignore-range';
  let resumedSeen = false;
  await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, (p) => (resumedSeen ||= p.resumed), base);
  expect(lastRange).toBe('bytes=123456-'); // it asked to resume …
  expect(resumedSeen).toBe(false); // … and noticed it was not granted
  const got = readFileSync(dest);
  expect(got.length).toBe(payload.length);
  expect(got.equals(payload)).toBe(true);
  expect(existsSync(`${dest}.part`)).toBe(false);
});

// A complete .part answered with 416 (Range past the end; HF sends Content-Range: bytes */SIZE) is
// verified and renamed into place (issue 13).
test('a complete .part answered with 416 finishes: verified and renamed into place', async () => {
  const { dest } = fresh();
  writeFileSync(`${dest}.part`, payload);
  await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, undefined, base);
  expect(lastRange).toBe(`bytes=${payload.length}-`);
  expect(readFileSync(dest).equals(payload)).toBe(true);
  expect(existsSync(`${dest}.part`)).toBe(false);
});

// A dropped connection is one line, exit 4, resumable (issue 13).
test('a short read (connection closed before Content-Length): one clear WEIGHTS error, the part kept, a rerun resumes', async () => {
  const { dest } = fresh();
  mode = 'short';
  const err = await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, undefined, base).catch((e) => e);
  expect(err).toBeInstanceOf(Step1xError);
  expect((err as Step1xError).code).toBe(ExitCode.WEIGHTS);
  expect((err as Error).message).toMatch(/vae\.safetensors/);
  expect(existsSync(dest)).toBe(false);
  const kept = readFileSync(`${dest}.part`);
  expect(kept.length).toBeLessThanOrEqual(SHORT);
  expect(kept.equals(payload.subarray(0, kept.length))).toBe(true);
  mode = 'normal';
  await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest }, undefined, base);
  expect(lastRange).toBe(kept.length ? `bytes=${kept.length}-` : undefined);
  expect(readFileSync(dest).equals(payload)).toBe(true);
});

test('a file without a SHA header is taken as is (nothing to verify); a corrupt one with a SHA is refused', async () => {
  const a = fresh();
  mode = 'no-sha';
  corrupt = true; // without a checksum the client cannot know: the bytes it got are what it keeps
  await downloadFile({ repo: 'r/x', file: 'config.json', dest: a.dest }, undefined, base);
  const got = readFileSync(a.dest);
  expect(got.length).toBe(payload.length);
  expect(got.subarray(0, 10).every((b) => b === 1)).toBe(true);
  expect(got.subarray(10).equals(payload.subarray(10))).toBe(true);
  expect(existsSync(`${a.dest}.part`)).toBe(false);
  // the SHA given only as a weak ETag is still checked
  const b = fresh();
  mode = 'etag-sha';
  corrupt = true;
  await expect(downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest: b.dest }, undefined, base)).rejects.toThrow(/checksum mismatch for vae\.safetensors: expected sha256 [0-9a-f]{64}/);
  expect(existsSync(b.dest)).toBe(false);
  expect(existsSync(`${b.dest}.part`)).toBe(false);
  corrupt = false;
  await downloadFile({ repo: 'r/x', file: 'vae.safetensors', dest: b.dest }, undefined, base);
  expect(readFileSync(b.dest).equals(payload)).toBe(true);
});

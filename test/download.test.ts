/** `step1x download` machinery against a local HTTP server on loopback: resume, checksums, plan. */
import { createServer, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { downloadFile, modelDownloadPlan } from '../src/io/download.js';

const payload = Buffer.alloc(300_000, 0);
for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
const sha = createHash('sha256').update(payload).digest('hex');
let server: Server;
let base = '';
let lastRange: string | undefined;
let corrupt = false;

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
    res.setHeader('x-linked-etag', `"${sha}"`);
    lastRange = req.headers.range;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) {
      const start = Number(m[1]);
      if (start >= body.length) {
        res.statusCode = 416;
        res.end();
        return;
      }
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

test('plan: DiT (v1.1 by default, v1.0 when asked), VAE and the top-level Qwen weight/config files', async () => {
  expect((await modelDownloadPlan('/m', base, 'v1.0'))[0].dest).toBe('/m/step1x-edit-i1258.safetensors');
  const plan = await modelDownloadPlan('/m', base);
  expect(plan.map((p) => p.dest)).toEqual([
    '/m/step1x-edit-v1p1-official.safetensors',
    '/m/vae.safetensors',
    '/m/Qwen2.5-VL-7B-Instruct/config.json',
    '/m/Qwen2.5-VL-7B-Instruct/model-00001-of-00005.safetensors',
  ]);
});

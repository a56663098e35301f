/**
 * Issue 13, item 2: downloads always finish. A complete `.part` answered with 416 is verified and
 * finished; an oversized `.part` is discarded; a dropped connection, an HTML answer or no network give
 * one line naming the URL and cause (exit 4) and the next run resumes; a corrupt existing destination
 * is not accepted.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Step1xError } from '../src/errors.js';
import { downloadFile, listRepo, type DownloadItem } from '../src/io/download.js';
import { sha256, startFakeHub, type FakeHub, type HubFile } from './util/fake-hub.js';
import { errorLine, expectCleanStderr, step1x } from './util/cli-run.js';

const payload = Buffer.alloc(100_000);
for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919 + (i >> 9)) & 0xff;
const REPO = 'stepfun-ai/Step1X-Edit';
let hub: FakeHub;

beforeAll(async () => {
  hub = await startFakeHub({ [REPO]: new Map<string, HubFile>([['vae.safetensors', { data: payload, lfs: true }]]) });
});
afterAll(() => hub.close());
afterEach(() => void (hub.mode = {}));

function item(extra: Partial<DownloadItem> = {}): DownloadItem {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-dl-'));
  return { repo: REPO, file: 'vae.safetensors', dest: join(dir, 'vae.safetensors'), ...extra };
}

async function code(p: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof Step1xError) return { code: e.code, message: e.message };
    throw e;
  }
  return { code: 0, message: '' };
}

test('a complete .part answered with 416 (Content-Length of the error page) is verified and finished', async () => {
  const it = item(); // no size from a listing: the 416's Content-Range tells it
  writeFileSync(`${it.dest}.part`, payload);
  hub.mode.range416ContentLength = 31;
  await downloadFile(it, undefined, hub.base);
  expect(readFileSync(it.dest).equals(payload)).toBe(true);
  expect(existsSync(`${it.dest}.part`)).toBe(false);
});

test('a .part longer than the file is discarded and the file fetched again', async () => {
  for (const extra of [{}, { size: payload.length, sha256: sha256(payload) }]) {
    const it = item(extra);
    writeFileSync(`${it.dest}.part`, Buffer.concat([payload, Buffer.alloc(500, 1)]));
    await downloadFile(it, undefined, hub.base);
    expect(readFileSync(it.dest).equals(payload)).toBe(true);
  }
});

test('a dropped connection: exit 4, one line naming the file and "resume"; the next run resumes and finishes', async () => {
  const it = item();
  hub.mode.dropAfter = 40_000;
  const r = await code(downloadFile(it, undefined, hub.base));
  expect(r.code).toBe(4);
  expect(r.message).toMatch(/download of stepfun-ai\/Step1X-Edit\/vae\.safetensors interrupted: .*bytes kept\); run the command again to resume/);
  expect(r.message).not.toMatch(/\n/);
  hub.mode = {};
  hub.log.length = 0;
  await downloadFile(it, undefined, hub.base);
  expect(readFileSync(it.dest).equals(payload)).toBe(true);
});

test('an HTML answer to the listing or the file: one line naming the URL, exit 4', async () => {
  hub.mode.html = 'listing';
  const a = await code(listRepo(REPO, hub.base));
  expect(a.code).toBe(4);
  expect(a.message).toMatch(/answered with an HTML page, not the repo listing; is HF_ENDPOINT/);
  expect(a.message).toContain(`${hub.base}/api/models/${REPO}`);
  hub.mode.html = 'file';
  const it = item();
  const b = await code(downloadFile(it, undefined, hub.base));
  expect(b.code).toBe(4);
  expect(b.message).toMatch(/answered with an HTML page, not the file/);
  expect(existsSync(it.dest)).toBe(false);
});

test('no network: the cause is named (ECONNREFUSED), exit 4, through the CLI with no stack trace', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-dlcli-'));
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r())); // nothing listens there now
  const r = step1x(['download', '--local-dir', dir], { env: { HF_ENDPOINT: `http://127.0.0.1:${port}` } });
  expect(r.code).toBe(4);
  expect(errorLine(r.stderr)).toMatch(new RegExp(`cannot reach http://127\\.0\\.0\\.1:${port}/api/models/.*: ECONNREFUSED`));
  expectCleanStderr(r.stderr);
});

test('an existing but corrupt destination is not accepted: it is fetched again and verified', async () => {
  const it = item({ size: payload.length, sha256: sha256(payload) });
  const bad = Buffer.from(payload);
  bad[5000] ^= 0xff;
  writeFileSync(it.dest, bad);
  hub.log.length = 0;
  await downloadFile(it, undefined, hub.base);
  expect(hub.log.some((u) => u.includes('/resolve/'))).toBe(true);
  expect(readFileSync(it.dest).equals(payload)).toBe(true);
  // a truncated one resumes from where it ends
  writeFileSync(it.dest, payload.subarray(0, 60_000));
  await downloadFile(it, undefined, hub.base);
  expect(readFileSync(it.dest).equals(payload)).toBe(true);
  // an intact one is accepted without a request
  hub.log.length = 0;
  await downloadFile(it, undefined, hub.base);
  expect(hub.log).toEqual([]);
});

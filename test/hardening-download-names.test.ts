/**
 * Issue 21, group 2: a hub (or an HF_ENDPOINT mirror) is untrusted input. Every name it sends becomes a
 * plain path inside the cache or nothing: `../` file names, blob ids and sha256s are refused with the
 * listing; a cache `refs/main` of `../../x` is not followed out of the cache; an empty HF_HUB_CACHE is
 * unset, not the current directory. A full disk or an unwritable directory is one line, exit 7, never an
 * unhandled rejection or an "internal error".
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../src/errors.js';
import { downloadFile, downloadToHfCache, isPlainRelativePath, listRepo, writeRef } from '../src/io/download.js';
import { hfHubDir, hfSnapshot } from '../src/io/model-files.js';
import { startFakeHub, type FakeHub, type HubFile } from './util/fake-hub.js';
import { errorLine, expectCleanStderr, step1xAsync } from './util/cli-run.js';

const REPO = 'stepfun-ai/Step1X-Edit';
const SHA = 'a'.repeat(40);
let listing: unknown = {};
let evil: Server;
let evilBase = '';
let hub: FakeHub;

beforeAll(async () => {
  evil = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(listing));
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
  evilBase = `http://127.0.0.1:${(evil.address() as { port: number }).port}`;
  hub = await startFakeHub({ [REPO]: new Map<string, HubFile>([['vae.safetensors', { data: Buffer.alloc(300_000, 7), lfs: true }]]) });
});
afterAll(async () => {
  await new Promise((r) => evil.close(r));
  await hub.close();
});

async function codeOf(p: Promise<unknown>): Promise<{ code?: number; message: string }> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof Step1xError)) throw e; // anything else would reach the user as "internal error"
    return { code: e.code, message: e.message };
  }
  return { message: 'no error' };
}

test('names from a listing are plain names: ../ file names, blob ids and sha256s refuse the listing (exit 4)', async () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ rfilename: '../../../../outside/X' }, /file name "\.\.\/\.\.\/\.\.\/\.\.\/outside\/X"/],
    [{ rfilename: '/etc/passwd' }, /file name "\/etc\/passwd"/],
    [{ rfilename: 'a\u0000b' }, /file name/],
    [{ rfilename: 'vae.safetensors', blobId: '../../../../outside/X' }, /blob id of vae\.safetensors/],
    [{ rfilename: 'vae.safetensors', lfs: { sha256: '../../x', size: 3 } }, /sha256 of vae\.safetensors/],
  ];
  for (const [sib, re] of cases) {
    listing = { sha: SHA, siblings: [sib] };
    const r = await codeOf(listRepo(REPO, evilBase));
    expect(r.code).toBe(ExitCode.WEIGHTS);
    expect(r.message).toMatch(re);
    expect(r.message).toMatch(/not a plain name inside the repo/);
  }
  expect(['a', 'a/b.json', 'x.y-z_1'].every(isPlainRelativePath)).toBe(true);
  expect(['', '.', 'a/../b', 'a//b', 'a\\b', '/a', 'a/'].some(isPlainRelativePath)).toBe(false);
});

test('CLI: download from a hub listing a ../ name: exit 4, nothing written outside the target', async () => {
  const root = mkdtempSync(join(tmpdir(), 'step1x-evil-'));
  const target = join(root, 'a', 'b', 'c', 'model');
  listing = { sha: SHA, siblings: [{ rfilename: '../../../../outside/X', size: 3 }, { rfilename: 'vae.safetensors', size: 3 }] };
  const r = await step1xAsync(['download', '--local-dir', target, '--quiet'], { env: { HF_ENDPOINT: evilBase } });
  expect(r.code).toBe(4);
  expect(errorLine(r.stderr)).toMatch(/not a plain name inside the repo/);
  expectCleanStderr(r.stderr);
  expect(existsSync(join(root, 'outside'))).toBe(false);
});

test('a cache refs/main of ../../x is not followed out of the cache; an empty HF_HUB_CACHE is unset', () => {
  const t = mkdtempSync(join(tmpdir(), 'step1x-refs-'));
  const repoDir = join(t, 'hub', 'models--a--b');
  mkdirSync(join(repoDir, 'snapshots', SHA), { recursive: true });
  mkdirSync(join(repoDir, 'refs'));
  mkdirSync(join(t, 'evil'));
  writeFileSync(join(repoDir, 'refs', 'main'), '../../../evil');
  expect(hfSnapshot('a/b', join(t, 'hub'))).toBe(join(repoDir, 'snapshots', SHA));
  const saved = { c: process.env.HF_HUB_CACHE, h: process.env.HF_HOME };
  try {
    process.env.HF_HUB_CACHE = '';
    process.env.HF_HOME = '';
    expect(hfHubDir()).toMatch(/\/\.cache\/huggingface\/hub$/);
  } finally {
    for (const [k, v] of [['HF_HUB_CACHE', saved.c], ['HF_HOME', saved.h]] as const) if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  }
});

test('a full disk (ENOSPC) while downloading: one line, exit 7, what arrived kept; no unhandled rejection', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-full-'));
  const dest = join(dir, 'vae.safetensors');
  symlinkSync('/dev/full', `${dest}.part`); // every write there fails with ENOSPC
  const r = await codeOf(downloadFile({ repo: REPO, file: 'vae.safetensors', dest }, undefined, hub.base));
  expect(r.code).toBe(ExitCode.OUTPUT);
  expect(r.message).toMatch(/no space left on the device \(ENOSPC\).*run the command again to resume/);
  // the HF cache layout: the blob's .incomplete file on the full device
  const hubDir = join(dir, 'hub');
  const blobs = join(hubDir, 'models--x--y', 'blobs');
  mkdirSync(blobs, { recursive: true });
  symlinkSync('/dev/full', join(blobs, `${'b'.repeat(40)}.incomplete`));
  const h = await codeOf(downloadToHfCache({ repo: REPO, file: 'vae.safetensors', dest: join(hubDir, 'models--x--y', 'snapshots', SHA, 'vae.safetensors'), blob: 'b'.repeat(40) }, undefined, hub.base));
  expect(h.code).toBe(ExitCode.OUTPUT);
  expect(h.message).toMatch(/ENOSPC/);
}, 20_000);

test('a directory that cannot be created (a file in the way, a read-only place): exit 7 naming it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-ro-'));
  writeFileSync(join(dir, 'file'), '');
  const r = await codeOf(downloadFile({ repo: REPO, file: 'vae.safetensors', dest: join(dir, 'file', 'sub', 'vae.safetensors') }, undefined, hub.base));
  expect(r.code).toBe(ExitCode.OUTPUT);
  expect(r.message).toMatch(/cannot write .*file\/sub.*ENOTDIR/);
  const w = await codeOf(Promise.resolve().then(() => writeRef('a/b', SHA, join(dir, 'file'))));
  expect(w.code).toBe(ExitCode.OUTPUT);
  expect(readdirSync(dir)).toEqual(['file']);
});

/**
 * Issue 12 item 4: `step1x download` writes the Hugging Face cache layout (blobs, snapshots/<commit>,
 * refs/main) from a loopback fake hub into a temporary HF cache; files already cached are reused; then
 * `step1x edit` runs with no --model. Ctrl-C says the download can be resumed.
 */
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dirFiles, gitBlobId, sha256, startFakeHub, type FakeHub } from './util/fake-hub.js';
import { expectCleanStderr, spawnCli, step1x, step1xAsync, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const STEP = 'stepfun-ai/Step1X-Edit';
const QWEN = 'Qwen/Qwen2.5-VL-7B-Instruct';
let hub: FakeHub;

beforeAll(async () => {
  const step = dirFiles(TINY_MODEL);
  hub = await startFakeHub({ [STEP]: step, [QWEN]: dirFiles(join(TINY_MODEL, 'Qwen2.5-VL-7B-Instruct')) });
});
afterAll(() => hub.close());

/** Put the Qwen repo into the cache as huggingface_hub would have, at an older commit. */
function precacheQwen(cache: string): string {
  const root = join(cache, 'models--Qwen--Qwen2.5-VL-7B-Instruct');
  const old = 'a'.repeat(40);
  mkdirSync(join(root, 'blobs'), { recursive: true });
  mkdirSync(join(root, 'snapshots', old), { recursive: true });
  mkdirSync(join(root, 'refs'), { recursive: true });
  for (const [name, f] of hub.repos.get(QWEN)!.files) {
    const etag = f.lfs ? sha256(f.data) : gitBlobId(f.data);
    cpSync(join(TINY_MODEL, 'Qwen2.5-VL-7B-Instruct', name), join(root, 'blobs', etag));
    symlinkSync(`../../blobs/${etag}`, join(root, 'snapshots', old, name));
  }
  writeFileSync(join(root, 'refs', 'main'), old);
  return root;
}

test('download into a temporary HF cache (Qwen already cached is reused), then edit with no --model', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'step1x-hfcache-'));
  const qwenRoot = precacheQwen(cache);
  const env = { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.base, STEP1X_MODEL: undefined, HF_HOME: undefined };
  hub.log.length = 0;
  const r = await step1xAsync(['download', '--version', 'v1.0'], { env });
  expect(r.stderr).not.toMatch(/^(Warning|Info): /m);
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/no --model needed/);
  // the Qwen files were not fetched again; the Step1X files were
  expect(hub.log.filter((u) => u.startsWith(`/${QWEN}/resolve`))).toEqual([]);
  expect(hub.log.filter((u) => u.startsWith(`/${STEP}/resolve`)).sort()).toEqual(
    ['step1x-edit-i1258.safetensors', 'step1x.json', 'vae.safetensors'].map((f) => `/${STEP}/resolve/main/${f}`),
  );
  // the layout huggingface_hub writes
  const root = join(cache, 'models--stepfun-ai--Step1X-Edit');
  const rev = hub.repos.get(STEP)!.sha;
  expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(rev);
  const dit = join(root, 'snapshots', rev, 'step1x-edit-i1258.safetensors');
  expect(lstatSync(dit).isSymbolicLink()).toBe(true);
  const ditBytes = readFileSync(join(TINY_MODEL, 'step1x-edit-i1258.safetensors'));
  expect(readlinkSync(dit)).toBe(`../../blobs/${sha256(ditBytes)}`);
  expect(readFileSync(dit).equals(ditBytes)).toBe(true);
  const json = join(root, 'snapshots', rev, 'step1x.json');
  expect(readlinkSync(json)).toBe(`../../blobs/${gitBlobId(readFileSync(join(TINY_MODEL, 'step1x.json')))}`);
  expect(readdirSync(join(root, 'blobs')).filter((n) => n.includes('incomplete'))).toEqual([]);
  // Qwen: the new commit's snapshot links to the blobs that were already there
  const qrev = hub.repos.get(QWEN)!.sha;
  expect(readFileSync(join(qwenRoot, 'refs', 'main'), 'utf8')).toBe(qrev);
  expect(realpathSync(join(qwenRoot, 'snapshots', qrev, 'config.json'))).toBe(realpathSync(join(qwenRoot, 'snapshots', 'a'.repeat(40), 'config.json')));

  // a second run fetches nothing
  hub.log.length = 0;
  const again = await step1xAsync(['download', '--version', 'v1.0', '--quiet'], { env });
  expect(again.code).toBe(0);
  expect(again.stderr).toBe('');
  expect(hub.log.filter((u) => u.includes('/resolve/'))).toEqual([]);

  // edit finds the model in the cache with no flags
  const { dir, photo } = tempPhoto('step1x-hfedit-');
  const out = join(dir, 'out.png');
  const e = step1x(['edit', photo, 'add snow', '--size', '32', '--steps', '1', '--quiet', '-o', out], { env });
  expect(e.stderr).toBe('');
  expect(e.code).toBe(0);
  expect(existsSync(out)).toBe(true);
});

test('edit with an empty HF cache: the message names step1x download and the sizes', () => {
  const cache = mkdtempSync(join(tmpdir(), 'step1x-hfempty-'));
  const { photo } = tempPhoto('step1x-hfe-');
  const r = step1x(['edit', photo, 'x', '--size', '32'], { env: { HF_HUB_CACHE: cache, STEP1X_MODEL: undefined } });
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/step1x download /);
  expect(r.stderr).toMatch(/vae\.safetensors \(335 MB\)/);
  expect(r.stderr).toMatch(/step1x-edit-v1p1-official\.safetensors \(24\.9 GB\)/);
  expect(r.stderr).toMatch(/Qwen2\.5-VL-7B-Instruct \(16\.6 GB/);
  const d = step1x(['edit', photo, 'x', '--model', cache], { env: { STEP1X_MODEL: undefined } });
  expect(d.code).toBe(4);
  expect(d.stderr).toMatch(/step1x download .*--local-dir DIR/);
  expect(d.stderr).toMatch(/vae\.safetensors \(335 MB\)/);
  const s = step1x(['edit', photo, 'x'], { env: { STEP1X_MODEL: cache } });
  expect(s.code).toBe(4);
  expect(s.stderr).toMatch(/step1x download/);
  expect(s.stderr).toMatch(/\(24\.9 GB\)/);
});

test('Ctrl-C during a download: exit 130, says it can be resumed, keeps what arrived; the next run finishes', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'step1x-hfint-'));
  hub.mode.stallAfter = 100_000;
  const child = spawnCli(['download', '--version', 'v1.0'], { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.base });
  let err = '';
  const t = await new Promise<{ code: number | null; ms: number }>((res) => {
    let sent = 0;
    child.stderr!.on('data', (d) => {
      err += d;
      if (!sent && /step1x-edit-i1258\.safetensors [0-9.]+ (KB|kB)/.test(err)) {
        sent = Date.now();
        child.kill('SIGINT');
      }
    });
    child.on('close', (code) => res({ code, ms: Date.now() - sent }));
  });
  hub.mode.stallAfter = undefined;
  expect(t.code).toBe(130);
  expect(t.ms).toBeLessThan(2000);
  expect(err).toMatch(/interrupted \(SIGINT\); what arrived is kept: run the same command again to resume/);
  expectCleanStderr(err);
  const blobs = join(cache, 'models--stepfun-ai--Step1X-Edit', 'blobs');
  expect(readdirSync(blobs).filter((n) => n.endsWith('.incomplete'))).toHaveLength(1);
  hub.log.length = 0;
  const r = await step1xAsync(['download', '--version', 'v1.0', '--quiet'], { env: { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.base } });
  expect(r.code).toBe(0);
  expect(hub.log).toContain(`/${STEP}/resolve/main/step1x-edit-i1258.safetensors`);
  expect(readdirSync(blobs).filter((n) => n.endsWith('.incomplete'))).toEqual([]);
});

test('download --local-dir keeps the official layout', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-local-'));
  const r = await step1xAsync(['download', '--version', 'v1.0', '--local-dir', dir, '--quiet'], { env: { HF_ENDPOINT: hub.base } });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(readFileSync(join(dir, 'vae.safetensors')).equals(readFileSync(join(TINY_MODEL, 'vae.safetensors')))).toBe(true);
  expect(existsSync(join(dir, 'Qwen2.5-VL-7B-Instruct', 'tokenizer.json.gz'))).toBe(true);
});

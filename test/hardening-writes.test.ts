/**
 * Issue 21, group 1: one writer (src/io/safe-write.ts) for every file the tool writes. Inputs of the run
 * are never replaced (by device + inode, whatever name or link reaches them), `--report` is an append-only
 * log checked before it is opened, pseudo file systems are refused at once, temporary names carry host,
 * boot and PID namespace so the stale cleaner removes only our own dead temps, and two batch processes in
 * separate PID namespaces sharing an output directory both finish with every output written once.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../src/errors.js';
import { checkWritePath, cleanStaleTemps, clearRunInputs, ensureOutputDir, openAppendLog, registerRunInput, TEMP_OWNER, tempName, writeFileSafely } from '../src/io/safe-write.js';
import { baseEnv, CLI, step1x, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const { dir, photo } = tempPhoto('step1x-w-');
const deadPid = () => spawnSync('true').pid!;

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<{ code?: number; message: string }> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return { code: (e as Step1xError).code, message: (e as Error).message };
  }
  return { message: 'no error' };
}

afterEach(() => clearRunInputs());

describe('temporary files', () => {
  test('the cleaner removes only our own (host, boot, PID namespace) temps of dead processes', () => {
    const sub = mkdtempSync(join(dir, 'clean-'));
    const dead = deadPid();
    const ours = `.step1x-${TEMP_OWNER}.${dead}-0badc0de.partial`;
    const live = `.step1x-${TEMP_OWNER}.${process.pid}-00c0ffee.partial`;
    // another pod of an Indexed Job: same volume, its own PID namespace, pids that mean nothing here
    const otherNs = `.step1x-${TEMP_OWNER.replace(/\.\d+$/, '.1234')}.${dead}-0badc0de.partial`;
    const foreign = ['.video.mp4.4000000.partial', `.out.png.${dead}.partial`, `.step1x-${dead}-0badc0de.partial`];
    for (const n of [ours, live, otherNs, ...foreign]) writeFileSync(join(sub, n), 'x');
    expect(cleanStaleTemps(sub)).toEqual([ours]);
    expect(readdirSync(sub).sort()).toEqual([live, otherNs, ...foreign].sort());
  });

  test('temp names say host.boot.pidns.pid', () => {
    expect(TEMP_OWNER).toMatch(/^[A-Za-z0-9_-]+\.[0-9a-f]+\.\d+$/);
    expect(tempName(dir)).toMatch(new RegExp(`/\\.step1x-${TEMP_OWNER.replace(/\./g, '\\.')}\\.${process.pid}-[0-9a-f]{8}\\.partial$`));
  });
});

describe('inputs of the run are never replaced', () => {
  test('by name and through a symlink: exit 2, the file intact', async () => {
    const input = join(dir, 'in.png');
    copyFileSync(photo, input);
    const before = readFileSync(input);
    registerRunInput(input, 'the manifest');
    const link = join(dir, 'link.png');
    symlinkSync(input, link);
    for (const p of [input, link]) {
      const r = await codeOf(writeFileSafely(p, 'replaced'));
      expect(r.code).toBe(ExitCode.USAGE);
      expect(r.message).toMatch(/is the manifest, an input of this run/);
    }
    expect(readFileSync(input)).toEqual(before);
  });

  test('--report (append-only log) never truncates, refuses an input, a read-only file and a FIFO without blocking', async () => {
    const rep = join(dir, 'r.jsonl');
    writeFileSync(rep, 'earlier line\n');
    const log = openAppendLog(rep, '--report');
    log.append('new line\n');
    log.close();
    expect(readFileSync(rep, 'utf8')).toBe('earlier line\nnew line\n');

    const manifest = join(dir, 'm.json');
    writeFileSync(manifest, '{}');
    registerRunInput(manifest, 'the manifest');
    expect((await codeOf(() => openAppendLog(manifest, '--report'))).code).toBe(ExitCode.USAGE);
    expect(readFileSync(manifest, 'utf8')).toBe('{}');

    const ro = join(dir, 'ro.jsonl');
    writeFileSync(ro, 'keep');
    chmodSync(ro, 0o444); // refused even as root, who could write it
    const r = await codeOf(() => openAppendLog(ro, '--report'));
    expect(r.code).toBe(ExitCode.OUTPUT);
    expect(r.message).toMatch(/read-only/);
    expect(readFileSync(ro, 'utf8')).toBe('keep');

    const fifo = join(dir, 'r.fifo');
    spawnSync('mkfifo', [fifo]);
    const f = await codeOf(() => openAppendLog(fifo, '--report'));
    expect(f.code).toBe(ExitCode.OUTPUT);
    expect(f.message).toMatch(/FIFO/);
  });

  test('--report on a full device: one line, exit 7 naming ENOSPC (not an internal error)', async () => {
    const log = openAppendLog('/dev/full', '--report');
    const r = await codeOf(() => log.append('{"index":0}\n'));
    log.close();
    expect(r.code).toBe(ExitCode.OUTPUT);
    expect(r.message).toMatch(/cannot write --report \/dev\/full: no space left on the device \(ENOSPC\)/);
  });

  test('CLI: convert interrupted while writing leaves no temporary file (exit 130)', async () => {
    const sub = mkdtempSync(join(dir, 'conv-'));
    const out = join(sub, 'vae-q8.safetensors');
    const c = spawn(process.execPath, [CLI, 'convert', '--to', 'q8', join(TINY_MODEL, 'vae.safetensors'), out, '--quiet'], { env: { ...baseEnv, STEP1X_TEST_HOLD_OUTPUT_MS: '30000' }, stdio: 'ignore' });
    for (let i = 0; i < 200 && !readdirSync(sub).some((n) => n.endsWith('.partial')); i++) await new Promise((r) => setTimeout(r, 100));
    expect(readdirSync(sub).filter((n) => n.endsWith('.partial'))).toHaveLength(1); // held, fully written
    const code = await new Promise<number | null>((res) => {
      c.on('close', (code) => res(code));
      c.kill('SIGINT');
    });
    expect(code).toBe(130);
    expect(readdirSync(sub)).toEqual([]);
  }, 60_000);

  test('paths on procfs are refused at once (no spinning mkdir)', async () => {
    for (const p of ['/proc/x/r.jsonl', '/proc/self/out.png']) {
      const r = await codeOf(() => checkWritePath(p));
      expect(r.code).toBe(ExitCode.OUTPUT);
      expect(r.message).toMatch(/procfs/);
    }
    expect((await codeOf(() => ensureOutputDir('/proc/out', '--output-dir /proc/out'))).message).toMatch(/procfs/);
  });

  test('CLI: convert IN OUT where IN is a symlink to OUT is refused, OUT intact', () => {
    const real = join(dir, 'model.safetensors');
    writeFileSync(real, 'the original bf16 checkpoint');
    const link = join(dir, 'link.safetensors');
    symlinkSync(real, link);
    const r = step1x(['convert', '--to', 'q8', link, real]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.stderr).toMatch(/a file of the checkpoint being converted/);
    expect(readFileSync(real, 'utf8')).toBe('the original bf16 checkpoint');
  });
});

const hasUnshare = spawnSync('unshare', ['--pid', '--fork', 'true']).status === 0;
if (!hasUnshare) process.stderr.write('hardening-writes: skipping the PID-namespace batch test: `unshare --pid --fork` is unavailable here (needs root or user namespaces)\n');

(hasUnshare ? test : test.skip)(
  'two batch processes in separate PID namespaces writing one output directory both finish, every output written once, equal to a single-process run',
  async () => {
    const inDir = mkdtempSync(join(tmpdir(), 'step1x-ns-in-'));
    const outDir = join(mkdtempSync(join(tmpdir(), 'step1x-ns-out-')), 'out');
    mkdirSync(outDir);
    const names = ['a.png', 'b.png', 'c.png', 'd.png'];
    for (const n of names) copyFileSync(photo, join(inDir, n));
    const man = join(inDir, 'm.json');
    writeFileSync(man, JSON.stringify(Object.fromEntries(names.map((n) => [n, 'x']))));
    const single = join(mkdtempSync(join(tmpdir(), 'step1x-ns-one-')), 'out');
    const run = (shard: string | undefined, shift: number, out = outDir) =>
      new Promise<{ code: number | null; stderr: string }>((res) => {
        // `shift` short-lived processes first, so the two namespaces give the workers different pids
        const pre = Array.from({ length: shift }, () => 'true;').join(' ');
        const cmd = `${pre} exec "${process.execPath}" "${CLI}" batch "${man}" --input-dir "${inDir}" --output-dir "${out}"${shard ? ` --shard ${shard}` : ''} --model "${TINY_MODEL}" --size 32 --steps 1 --quiet`;
        // each output is held as a temp for 2 s: the other namespace's cleaner runs while it is in flight
        const c = spawn('unshare', ['--pid', '--fork', 'sh', '-c', cmd], { env: { ...baseEnv, STEP1X_TEST_HOLD_OUTPUT_MS: '2000' }, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        c.stderr!.on('data', (d) => (stderr += d));
        c.on('close', (code) => res({ code, stderr }));
      });
    // and a single process over the whole manifest: the shards' outputs must equal its outputs byte for byte
    const [a, b, one] = await Promise.all([run('0/2', 0), run('1/2', 3), run(undefined, 0, single)]);
    expect(one.code).toBe(0);
    expect(a.stderr).toBe('');
    expect(b.stderr).toBe('');
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(readdirSync(outDir).sort()).toEqual(names);
    for (const n of names) {
      expect(statSync(join(outDir, n)).size).toBeGreaterThan(100);
      expect(readFileSync(join(outDir, n)).equals(readFileSync(join(single, n)))).toBe(true);
    }
    expect(existsSync(join(outDir, 'x.png'))).toBe(false);
  },
  600_000,
);

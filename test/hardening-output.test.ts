/**
 * Issue 13, items 1, 3, 6, 7: `-o` never replaces what is not ours, broken stdout gives one line and
 * exit 7, temporary files of killed runs are cleaned, and every output path problem is found before
 * any model work (these runs fail in well under the time the model would take to load).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, createReadStream, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkOutputPath, cleanStaleTemps, writeOutputFile } from '../src/pipeline/output.js';
import { TEMP_OWNER } from '../src/io/safe-write.js';
import { errorLine, expectCleanStderr, FAST, step1x, step1xAsync, step1xSh, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const PNG_SIG = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
const { dir, photo } = tempPhoto('step1x-out-');

/** A pid that surely belongs to no process: one that just exited. */
function deadPid(): number {
  return spawnSync('true').pid!; // spawnSync reaps it: the pid is free
}

describe('item 1: special files, symlinks, permissions, the input itself', () => {
  test('a character device is written directly, never replaced', async () => {
    await writeOutputFile('/dev/null', new Uint8Array([1, 2, 3]));
    expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
  });

  test('a FIFO is written directly (a reader gets the bytes) and stays a FIFO', async () => {
    const fifo = join(dir, 'pipe.png');
    execFileSync('mkfifo', [fifo]);
    const got: Buffer[] = [];
    const reader = new Promise<void>((res) => createReadStream(fifo).on('data', (d) => got.push(d as Buffer)).on('end', () => res()));
    await writeOutputFile(fifo, Buffer.from('hello fifo'));
    await reader;
    expect(Buffer.concat(got).toString()).toBe('hello fifo');
    expect(lstatSync(fifo).isFIFO()).toBe(true);
  });

  test('a symlink is followed: the target is replaced atomically, the link stays a link, the mode is kept', async () => {
    const target = join(dir, 'real.png');
    writeFileSync(target, 'old');
    chmodSync(target, 0o600);
    const link = join(dir, 'link.png');
    symlinkSync(target, link);
    await writeOutputFile(link, Buffer.from('new'));
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe(target);
    expect(readFileSync(target, 'utf8')).toBe('new');
    expect(statSync(target).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).filter((n) => n.endsWith('.partial'))).toEqual([]);
  });

  test('an existing file keeps its permissions (0640 stays 0640)', async () => {
    const p = join(dir, 'keep.png');
    writeFileSync(p, 'x');
    chmodSync(p, 0o640);
    await writeOutputFile(p, Buffer.from('y'));
    expect(statSync(p).mode & 0o777).toBe(0o640);
  });

  test.each([
    ['a read-only file of ours', () => { const p = join(dir, 'ro.png'); writeFileSync(p, 'keep me'); chmodSync(p, 0o444); return p; }, /read-only/, 7],
    ['a dangling symlink', () => { const p = join(dir, 'dangling.png'); symlinkSync(join(dir, 'nowhere', 'x.png'), p); return p; }, /dangling symlink/, 7],
    ['a symlink loop', () => { const a = join(dir, 'loopA.png'), b = join(dir, 'loopB.png'); symlinkSync(b, a); symlinkSync(a, b); return a; }, /symlink loop/, 7],
    ['a directory', () => { const p = join(dir, 'adir.png'); mkdirSync(p); return p; }, /is a directory/, 7],
    ['the input image itself', () => photo, /is the input image/, 2],
    ['the input image through a symlink', () => { const p = join(dir, 'alias.png'); symlinkSync(photo, p); return p; }, /is the input image/, 2],
  ])('edit -o %s: refused before any model work, nothing replaced', (_n, make, re, code) => {
    const out = (make as () => string)();
    const before = existsSync(out) ? lstatSync(out) : undefined;
    const content = before?.isFile() ? readFileSync(out) : undefined;
    const r = step1x(['edit', photo, 'x', ...FAST, '-o', out]);
    expect(r.code).toBe(code);
    expect(errorLine(r.stderr)).toMatch(re as RegExp);
    expectCleanStderr(r.stderr);
    if (before) {
      const after = lstatSync(out);
      expect([after.ino, after.mode]).toEqual([before.ino, before.mode]);
      if (content) expect(readFileSync(out).equals(content)).toBe(true);
    }
    expect(readFileSync(photo).subarray(0, 4).equals(PNG_SIG)).toBe(true);
  });

  test('edit -o symlink-to-0600-file: the real run writes the PNG into the target, keeps link and mode', () => {
    const target = join(dir, 'edited-target.png');
    writeFileSync(target, 'placeholder');
    chmodSync(target, 0o600);
    const link = join(dir, 'edited-link.png');
    symlinkSync(target, link);
    const r = step1x(['edit', photo, 'add snow', ...FAST, '-o', link]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(target).subarray(0, 4).equals(PNG_SIG)).toBe(true);
    expect(statSync(target).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).filter((n) => n.endsWith('.partial'))).toEqual([]);
  });
});

describe('item 3: broken stdout', () => {
  test('edit -o - | true: one line, exit 7, no stack trace', () => {
    const r = step1xSh(`node "$CLI" edit ${photo} x ${FAST.join(' ')} -o - | true; echo "rc=\${PIPESTATUS[0]}" >&2`);
    expect(r.stderr).toMatch(/rc=7/);
    expect(errorLine(r.stderr)).toMatch(/cannot write the image to stdout: .*EPIPE/);
    expectCleanStderr(r.stderr);
  });

  test('edit -o - > /dev/full: one line naming ENOSPC, exit 7', () => {
    const r = step1xSh(`node "$CLI" edit ${photo} x ${FAST.join(' ')} -o - > /dev/full`);
    expect(r.code).toBe(7);
    expect(errorLine(r.stderr)).toMatch(/ENOSPC/);
    expectCleanStderr(r.stderr);
  });

  test('inspect | head closing the pipe early ends quietly with exit 0', () => {
    const r = step1xSh(`node "$CLI" inspect ${join(TINY_MODEL, 'Qwen2.5-VL-7B-Instruct')} | head -c 10 >/dev/null`);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
  });
});

describe('item 6: temporary files of a killed run', () => {
  test('the next run into the directory removes temp files whose process is gone, and keeps live ones', () => {
    const sub = join(dir, 'kill9');
    mkdirSync(sub);
    const dead = deadPid();
    const stale = [`.step1x-${TEMP_OWNER}.${dead}-0badc0de.partial`];
    const live = `.step1x-${TEMP_OWNER}.${process.pid}-00c0ffee.partial`;
    // names of earlier versions and other programs carry no PID namespace: never ours to judge (issue 21)
    const foreign = [`.step1x-${dead}-0badc0de.partial`, `.out.png.${dead}.partial`];
    for (const n of [...stale, live, ...foreign]) writeFileSync(join(sub, n), 'half a PNG');
    // a run that fails later (missing model files) still checks and cleans the output directory first
    const r = step1x(['edit', photo, 'x', '--model', '/nonexistent-model', '-o', join(sub, 'out.png')]);
    expect(r.code).toBe(4);
    expect(readdirSync(sub).sort()).toEqual([live, ...foreign].sort());
  });

  test('cleanStaleTemps ignores other files', () => {
    const sub = join(dir, 'other');
    mkdirSync(sub);
    writeFileSync(join(sub, '.hidden.partial'), '');
    writeFileSync(join(sub, 'a.png'), '');
    expect(cleanStaleTemps(sub)).toEqual([]);
    expect(readdirSync(sub).sort()).toEqual(['.hidden.partial', 'a.png']);
  });
});

describe('item 7: output path problems found before any model work', () => {
  test.each([
    ['a missing directory with a trailing slash', () => join(dir, 'newdir') + '/', /ends with a slash/],
    ['a missing directory', () => join(dir, 'nodir', 'out.png'), /does not exist/],
    ['a name longer than NAME_MAX', () => join(dir, `${'n'.repeat(252)}.png`), /longer than 255 bytes|too long/],
    ['a name whose temp name would not fit', () => join(dir, `${'t'.repeat(240)}.png`), null],
    ['a directory that is not writable', () => { const d = join(dir, 'rodir'); mkdirSync(d); chmodSync(d, 0o555); return join(d, 'out.png'); }, null],
  ])('edit -o %s', (_n, make, re) => {
    const out = (make as () => string)();
    // the model does not exist: if the output were checked late, the error would be about the model
    const r = step1x(['edit', photo, 'x', '--model', '/nonexistent-model', '-o', out]);
    if (re === null && r.code === 4) {
      // allowed: this name / directory IS writable here (root ignores directory modes), then the model is next
      expect(errorLine(r.stderr)).toMatch(/model directory not found/);
      return;
    }
    expect(r.code).toBe(7);
    if (re) expect(errorLine(r.stderr)).toMatch(re as RegExp);
    expectCleanStderr(r.stderr);
    expect(existsSync(out)).toBe(false);
  });

  test('golden --dump into a missing directory fails before the case runs', () => {
    const r = step1x(['golden', join(TINY_MODEL, '..'), '--dump', '/nonexistent-dir/x.safetensors']);
    expect(r.code).toBe(7);
    expect(errorLine(r.stderr)).toMatch(/--dump|nonexistent-dir/);
    expect(r.stdout).toBe(''); // nothing compared
    expectCleanStderr(r.stderr);
  });

  test('checkOutputPath accepts a new file in a writable directory and leaves nothing behind', () => {
    const sub = join(dir, 'ok');
    mkdirSync(sub);
    checkOutputPath(join(sub, 'out.png'), [photo]);
    expect(readdirSync(sub)).toEqual([]);
  });
});

describe('item 1 through the CLI: -o on special files', () => {
  test('edit -o /dev/null: written directly (PNG), /dev/null stays a character device, exit 0', () => {
    const r = step1x(['edit', photo, 'x', ...FAST, '-o', '/dev/null']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
  });
  test('edit -o FIFO: the reader gets a PNG, the FIFO stays a FIFO', async () => {
    const fifo = join(dir, 'out-fifo');
    execFileSync('mkfifo', [fifo]);
    const got: Buffer[] = [];
    const reader = new Promise<void>((res) => createReadStream(fifo).on('data', (d) => got.push(d as Buffer)).on('end', () => res()));
    const r = await step1xAsync(['edit', photo, 'x', ...FAST, '-o', fifo]);
    await reader;
    expect(r.code).toBe(0);
    expect(Buffer.concat(got).subarray(0, 4).equals(PNG_SIG)).toBe(true);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
  });
  test('a block device is refused before any model work', () => {
    const dev = ['/dev/loop0', '/dev/sda', '/dev/vda', '/dev/nvme0n1'].find((p) => existsSync(p) && statSync(p).isBlockDevice());
    if (!dev) return; // none visible in this container
    const r = step1x(['edit', photo, 'x', ...FAST, '-o', dev]);
    expect(r.code).toBe(7);
    expect(errorLine(r.stderr)).toMatch(/block device/);
  });
});

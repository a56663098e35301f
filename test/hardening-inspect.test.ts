/**
 * Issue 13, items 4 and 10: `inspect` on hostile files. A 1 MB zTXt / iTXt chunk that inflates to 1 GiB
 * is refused with a message saying so while the process stays under 300 MB of RSS; text from the file
 * cannot drive the terminal; the file kind is told by content, not by extension.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync, constants as zc } from 'node:zlib';
import { encodePng } from '../src/io/image.js';
import { encodeChunk, insertPngChunks } from '../src/io/png-text.js';
import { REPO_ROOT } from './util/golden-path.js';
import { baseEnv, errorLine, expectCleanStderr, step1x } from './util/cli-run.js';

const dir = mkdtempSync(join(tmpdir(), 'step1x-insp-'));
const small = encodePng({ width: 2, height: 2, data: new Uint8Array(12) });

/** A zlib stream of `mib` MiB of zeros built from one 1 MiB block repeated (≈ 1 KB per MiB), valid adler32. */
function zeroBomb(mib: number): Buffer {
  const block = deflateRawSync(Buffer.alloc(1 << 20), { finishFlush: zc.Z_SYNC_FLUSH }); // non-final, byte-aligned
  const n = mib * (1 << 20);
  const adler = (((n % 65521) << 16) | 1) >>> 0; // a stays 1 for zeros, b = n mod 65521
  const tail = Buffer.alloc(6);
  tail[0] = 0x03; // final empty fixed-Huffman block
  tail[1] = 0x00;
  tail.writeUInt32BE(adler, 2);
  return Buffer.concat([Buffer.from([0x78, 0x9c]), ...Array(mib).fill(block), tail]);
}

function pngWith(name: string, chunk: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, insertPngChunks(small, [chunk]));
  return p;
}

/** `inspect` in a process of its own (no launcher), reporting its peak RSS. */
function inspectRss(path: string): { code: number | null; stderr: string; rssMB: number } {
  const script = join(dir, 'rss.mjs');
  writeFileSync(
    script,
    `import { main } from ${JSON.stringify(join(REPO_ROOT, 'dist/src/cli/main.js'))};\n` +
      // VmHWM is this process's own peak: getrusage's maxRSS keeps the forking parent's (jest's) high-water
      // mark across exec on Linux, so late in a full run it would report jest's size, not ours
      `import { readFileSync } from 'node:fs';\n` +
      `const hwm = () => { try { return Number(/VmHWM:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]); } catch { return process.resourceUsage().maxRSS; } };\n` +
      `process.on('exit', () => process.stderr.write('RSS_KB ' + hwm() + '\\n'));\n` +
      `await main(['node', 'step1x', 'inspect', ${JSON.stringify(path)}]);\n`,
  );
  const r = spawnSync(process.execPath, [script], { env: baseEnv, encoding: 'utf8', timeout: 120_000 });
  const m = /RSS_KB (\d+)/.exec(r.stderr);
  return { code: r.status, stderr: r.stderr.replace(/RSS_KB \d+\n/, ''), rssMB: m ? Number(m[1]) / 1024 : Infinity };
}

describe('item 4: bounded inflation', () => {
  const bomb = zeroBomb(1024);
  test('the test file is what the issue describes: ~1 MB that inflates to 1 GiB', () => {
    expect(bomb.length).toBeLessThan(1.5e6);
  });

  test.each([
    ['zTXt', () => encodeChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), bomb]))],
    ['iTXt', () => encodeChunk('iTXt', Buffer.concat([Buffer.from('Comment\0\x01\0\0\0', 'latin1'), bomb]))],
  ])('a %s chunk inflating to 1 GiB: exit 3, one line saying so, RSS < 300 MB', (type, make) => {
    const p = pngWith(`bomb-${type}.png`, (make as () => Uint8Array)());
    const r = inspectRss(p);
    console.log(`inspect ${type} bomb: peak RSS ${r.rssMB.toFixed(0)} MB, exit ${r.code}`);
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(new RegExp(`malformed ${type} chunk: compressed text inflates to more than 4 MiB`));
    expect(r.rssMB).toBeLessThan(300);
    const cli = step1x(['inspect', p]);
    expect(cli.code).toBe(3);
    expectCleanStderr(cli.stderr);
  });

  test('many chunks of 4 MiB each: the total is bounded too', () => {
    const four = zeroBomb(3);
    const chunks = Array.from({ length: 8 }, () => encodeChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), four])));
    const p = join(dir, 'many.png');
    writeFileSync(p, insertPngChunks(small, chunks));
    const r = inspectRss(p);
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/more than 16 MiB in total/);
    expect(r.rssMB).toBeLessThan(300);
  });
});

describe('item 10: sanitising and content detection', () => {
  const evil = 'a\x1b]0;pwned\x07\x1b[31mred\x9b2J\u202eevil';
  test('text chunks: escape sequences are shown, not sent', () => {
    const p = pngWith('evil.png', encodeChunk('tEXt', Buffer.from(`Title\0${evil}`, 'latin1')));
    const r = step1x(['inspect', p]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/[\x1b\x07\x9b]/);
    expect(r.stdout).toContain('a\\u001b]0;pwned\\u0007\\u001b[31mred\\u009b2J');
    const j = step1x(['inspect', p, '--json']);
    expect(j.code).toBe(0);
    expect(j.stdout).not.toMatch(/[\x1b\x07\x9b]/);
    expect(() => JSON.parse(j.stdout)).not.toThrow();
  });

  test('tensor names in safetensors errors and tables are sanitised too', () => {
    const h = Buffer.from(JSON.stringify({ 'x\x1b[2Jy': { dtype: 'F4', shape: [1], data_offsets: [0, 4] } }));
    const f = Buffer.alloc(8 + h.length + 4);
    f.writeBigUInt64LE(BigInt(h.length));
    h.copy(f, 8);
    const p = join(dir, 'evil.safetensors');
    writeFileSync(p, f);
    const r = step1x(['inspect', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toMatch(/\x1b/);
    expect(errorLine(r.stderr)).toContain('x\\u001b[2Jy');
  });

  test.each([
    ['empty.png', Buffer.alloc(0), 3, /not a PNG file \(empty file, 0 bytes\)/],
    ['text.png', Buffer.from('hello, not a png'), 3, /not a PNG file \(no PNG signature\)/],
    ['photo.safetensors', Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0]), 3, /a JPEG image; only PNG images carry/],
  ])('%s is named by its content', (name, bytes, code, re) => {
    const p = join(dir, name as string);
    writeFileSync(p, bytes as Buffer);
    const r = step1x(['inspect', p]);
    expect(r.code).toBe(code);
    expect(errorLine(r.stderr)).toMatch(re as RegExp);
    expectCleanStderr(r.stderr);
  });
});

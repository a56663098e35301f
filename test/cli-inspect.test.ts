/**
 * `step1x inspect` and `step1x devices` as a new user would run them. The program is driven in-process
 * (buildProgram + reportError from src/cli/main.ts, stdout/stderr captured) so the test does not depend
 * on a build; when dist/ is at least as new as the sources, a few cases also run `node bin/step1x.js`.
 * Every malformed input must give one line on stderr, a non-zero exit code, no stack trace, in < 1 s.
 */
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PNG } from 'pngjs';
import { buildProgram, reportError } from '../src/cli/main.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { encodeChunk, encodeITXtChunk, insertPngChunks, readPngTextChunks } from '../src/io/png-text.js';
import { writeFakeShardedQwen, writeHeaderOnlyFake, writeMalformedCases, type MalformedCase } from './util/fake-checkpoint.js';
import { REPO_ROOT, goldenCase } from './util/golden-path.js';

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run the CLI in-process with argv (without "node step1x"), capturing output. */
async function run(...args: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string | Uint8Array) => ((stdout += String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => ((stderr += String(s)), true)) as typeof process.stderr.write;
  const t0 = performance.now();
  let code = 0;
  try {
    await buildProgram().parseAsync(['node', 'step1x', ...args]);
  } catch (e) {
    code = reportError(e);
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
  return { code, stdout, stderr, ms: performance.now() - t0 };
}

let dir: string;
let cases: MalformedCase[];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'step1x-cli-'));
  cases = await writeMalformedCases(join(dir, 'malformed'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('step1x inspect on malformed checkpoints', () => {
  test('one line, non-zero exit, no stack trace, no hang', async () => {
    expect(cases.length).toBeGreaterThanOrEqual(12);
    const failures: string[] = [];
    // (dir-ambiguous is a valid model directory for inspect: see the model-directory test)
    for (const c of cases.filter((x) => x.id !== 'dir-ambiguous')) {
      const r = await run('inspect', c.path);
      const lines = r.stderr.trimEnd().split('\n');
      const ok =
        r.code === c.code &&
        lines.length === 1 &&
        lines[0].startsWith('step1x: error: ') &&
        lines[0].includes(c.path) &&
        c.expect.test(lines[0]) &&
        !/\n\s+at /.test(r.stderr) &&
        r.stdout === '' &&
        r.ms < 1000;
      if (!ok) failures.push(`${c.id}: code ${r.code} (want ${c.code}), ${r.ms.toFixed(0)} ms, stderr ${JSON.stringify(r.stderr)}`);
    }
    expect(failures).toEqual([]);
  });

  test('missing path and non-PNG images', async () => {
    const r = await run('inspect', join(dir, 'does-not-exist.safetensors'));
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^step1x: error: inspect: .*does-not-exist\.safetensors: no such file or directory\n$/);
    const jpg = join(dir, 'photo.jpg');
    await writeFile(jpg, 'not really');
    expect((await run('inspect', jpg)).stderr).toMatch(/only PNG images carry step1x parameters/);
    const usage = await run('inspect');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/missing required argument 'path'/);
  });
});

describe('step1x inspect on checkpoints', () => {
  test('table and totals for a small file; --json; --filter', async () => {
    const p = join(dir, 'small.safetensors');
    await writeSafetensors(
      p,
      {
        'a.weight': { dtype: 'BF16', shape: [3, 5], data: new Uint16Array(15) },
        'a.bias': { dtype: 'F32', shape: [3], data: new Float32Array(3) },
      },
      { format: 'pt' },
    );
    const r = await run('inspect', p);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/a\.weight\s+BF16\s+\[3,5\]\s+30\n/);
    expect(r.stdout).toMatch(/a\.bias\s+F32\s+\[3\]\s+12\n/);
    expect(r.stdout).toContain('total: 2 tensors, 18 parameters (BF16 15, F32 3), 42 bytes (42 B)');
    expect(r.stdout).toContain('metadata {"format":"pt"}');
    const j = JSON.parse((await run('inspect', p, '--json')).stdout);
    expect(j.totals).toEqual({ count: 2, params: 18, bytes: 42 });
    expect(j.tensors.map((t: { name: string }) => t.name).sort()).toEqual(['a.bias', 'a.weight']);
    expect((await run('inspect', p, '--filter', 'bias')).stdout).toContain('total (matching "bias"): 1 tensors, 3 parameters');
  });

  test('a fake of the real model directory (DiT 24.9 GB + VAE + 5-shard Qwen) summarizes instantly', async () => {
    const shapes = dirname(goldenCase('real_shapes'));
    // the in-repo copies are part of the repository: their absence is a failure, not a skip
    expect(existsSync(join(shapes, 'real_shapes_qwen/params.json'))).toBe(true);
    const { shapesJsonEntries } = await import('../src/io/checkpoint.js');
    const m = join(dir, 'model');
    await mkdir(m);
    await writeHeaderOnlyFake(join(m, 'step1x-edit-i1258.safetensors'), await shapesJsonEntries(join(shapes, 'real_shapes/dit_step1x-edit-i1258.json')));
    await writeHeaderOnlyFake(join(m, 'vae.safetensors'), await shapesJsonEntries(join(shapes, 'real_shapes/vae.json')));
    await writeFakeShardedQwen(join(m, 'Qwen2.5-VL-7B-Instruct'), await shapesJsonEntries(join(shapes, 'real_shapes_qwen/params.json')));
    const r = await run('inspect', m);
    expect(r.code).toBe(0);
    expect(r.ms).toBeLessThan(1000);
    expect(r.stdout).toContain('model directory, official layout, 3 checkpoints');
    expect(r.stdout).toMatch(/Qwen2\.5-VL-7B-Instruct\s+5 shards, 729 tensors, 8,292,166,656 parameters \(BF16 8,292,166,656\)/);
    expect(r.stdout).toMatch(/step1x-edit-i1258\.safetensors\s+Step1X-Edit DiT v1\.0, 817 tensors, 12,427,800,385 parameters/);
    expect(r.stdout).toMatch(/vae\.safetensors\s+244 tensors, 83,819,683 parameters \(F32 83,819,683\), 319\.7 MiB/);
    const j = JSON.parse((await run('inspect', m, '--json')).stdout);
    expect(j.checkpoints.map((c: { totals: { count: number } }) => c.totals.count)).toEqual([729, 817, 244]);
  });

  test('a 25 GB sparse fake of the real DiT prints instantly', async () => {
    const shapes = join(goldenCase('real_shapes'), 'dit_step1x-edit-i1258.json');
    expect(existsSync(shapes)).toBe(true);
    const { shapesJsonEntries } = await import('../src/io/checkpoint.js');
    const p = join(dir, 'step1x-edit-i1258.safetensors');
    await writeHeaderOnlyFake(p, await shapesJsonEntries(shapes));
    expect((await stat(p)).size).toBeGreaterThan(24e9);
    const r = await run('inspect', p, '--json');
    expect(r.code).toBe(0);
    expect(r.ms).toBeLessThan(1000);
    const j = JSON.parse(r.stdout);
    expect(j.totals).toEqual({ count: 817, params: 12427800385, bytes: 24855600770 });
  });
});

describe('step1x inspect on PNG files', () => {
  function tinyPng(w: number, h: number): Uint8Array {
    const png = new PNG({ width: w, height: h });
    png.data.fill(200);
    return new Uint8Array(PNG.sync.write(png));
  }

  test('size and text chunks (iTXt UTF-8, tEXt latin-1)', async () => {
    const params = JSON.stringify({ prompt: 'Make it snow ❄ — über', seed: 42, steps: 28, cfg: 6 });
    const p = join(dir, 'out.png');
    const tEXt = encodeChunk('tEXt', Uint8Array.from([...Buffer.from('Software\0step1x 0.1.0', 'latin1')]));
    await writeFile(p, insertPngChunks(tinyPng(7, 3), [encodeITXtChunk('parameters', params), tEXt]));
    const chunks = await readPngTextChunks(p);
    expect(chunks.map((c) => [c.type, c.keyword, c.text])).toEqual([
      ['iTXt', 'parameters', params],
      ['tEXt', 'Software', 'step1x 0.1.0'],
    ]);
    const r = await run('inspect', p);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/out\.png: PNG 7x3, 8-bit RGBA, \d+ bytes\n/);
    expect(r.stdout).toContain(`parameters (iTXt): ${params}\n`);
    expect(r.stdout).toContain('Software (tEXt): step1x 0.1.0\n');
    const j = JSON.parse((await run('inspect', p, '--json')).stdout);
    expect([j.kind, j.width, j.height, j.text[0].text]).toEqual(['png', 7, 3, params]);
    expect(() => encodeITXtChunk('', 'x')).toThrow(/keyword "" must be 1-79/);
  });

  test('corrupt PNGs: bad CRC, truncated, no IHDR', async () => {
    const good = insertPngChunks(tinyPng(2, 2), [encodeITXtChunk('parameters', 'x')]);
    const badCrc = good.slice();
    badCrc[badCrc.length - 12 - 5] ^= 0xff; // last byte of the iTXt chunk's CRC
    const variants: [string, Uint8Array, RegExp][] = [
      ['bad-crc.png', badCrc, /chunk iTXt at byte \d+ has a bad CRC/],
      ['truncated.png', good.subarray(0, 40), /runs past the end of the file|without an IEND chunk/],
      ['sig-only.png', good.subarray(0, 8), /without an IEND chunk/],
      ['no-ihdr.png', Uint8Array.from([...good.subarray(0, 8), ...encodeChunk('IEND', new Uint8Array(0))]), /first chunk is IEND, not IHDR/],
    ];
    for (const [name, bytes, re] of variants) {
      const p = join(dir, name);
      await writeFile(p, bytes);
      const r = await run('inspect', p);
      expect([name, r.code]).toEqual([name, 3]);
      expect(r.stderr.trimEnd().split('\n').length).toBe(1);
      expect(r.stderr).toMatch(re);
    }
  });
});

describe('step1x devices', () => {
  test('--json describes the adapter', async () => {
    // The suite needs an adapter (lavapipe on CPU machines; .ci/run installs it): a missing one fails
    // here with its message. The no-adapter path itself is tested in edit-cli.test.ts.
    const r = await run('devices', '--json');
    if (r.code !== 0) throw new Error(`step1x devices --json exited ${r.code}: ${r.stderr.trim()}`);
    const j = JSON.parse(r.stdout);
    expect(Array.isArray(j.features)).toBe(true);
    expect(j.limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
    const t = await run('devices');
    expect(t.stdout).toMatch(/adapter: .*\n/);
    expect(t.stdout).toMatch(/maxStorageBufferBindingSize\s+\d+/);
  });
});

/** Sources whose build in dist/ is missing or older than them (`npm test` builds first, so none). */
function staleDist(): string[] {
  const pairs = ['io/safetensors', 'io/checkpoint', 'cli/inspect', 'cli/main'].map((m) => [join(REPO_ROOT, 'src', m + '.ts'), join(REPO_ROOT, 'dist/src', m + '.js')]);
  return pairs.filter(([src, out]) => !existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs).map(([src]) => src);
}

describe('node bin/step1x.js (built CLI)', () => {
  test('malformed files through the real process: one line, exit code, exits by itself', () => {
    const stale = staleDist();
    if (stale.length) throw new Error(`dist/ is missing or older than ${stale.join(', ')}: build first (npx tsc -p tsconfig.json; npm test does)`);
    for (const c of cases.filter((x) => ['empty', 'overlap', 'dir-index-missing-shard', 'metadata-not-map'].includes(x.id))) {
      const r = spawnSync(process.execPath, [join(REPO_ROOT, 'bin/step1x.js'), 'inspect', c.path], { encoding: 'utf8', timeout: 15000 });
      expect([c.id, r.status]).toEqual([c.id, c.code]);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(c.expect);
    }
  });
});

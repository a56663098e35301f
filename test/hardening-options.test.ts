/**
 * Issue 13, item 8: no silent nonsense. Every bad option is refused with one line naming it and exit 2,
 * before the GPU opens (the runs below never print "opening the GPU").
 */
import { join } from 'node:path';
import { writeSafetensors } from '../src/io/safetensors.js';
import { checkSizeLevel, floatOpt, intOpt, parseBytes } from '../src/cli/options.js';
import { errorLine, expectCleanStderr, step1x, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const { dir, photo } = tempPhoto('step1x-opt-');
// 64x48 at --size 32 → working 32x16 → latent [2, 4]
const LAT = [1, 16, 2, 4];

async function noise(name: string, dtype: 'F32' | 'I32', fill: (i: number) => number, shape = LAT): Promise<string> {
  const p = join(dir, name);
  const n = shape.reduce((a, b) => a * b, 1);
  const data = dtype === 'F32' ? Float32Array.from({ length: n }, (_, i) => fill(i)) : Int32Array.from({ length: n }, (_, i) => fill(i));
  await writeSafetensors(p, { noise: { dtype, shape, data } });
  return p;
}

function run(extra: string[]) {
  return step1x(['edit', photo, 'x', '--model', TINY_MODEL, '--size', '32', '-o', join(dir, 'out.png'), ...extra]);
}

function expectRefused(r: ReturnType<typeof run>, re: RegExp, code = 2): void {
  expect(r.code).toBe(code);
  expect(errorLine(r.stderr)).toMatch(re);
  expect(r.stderr).not.toMatch(/opening the GPU/);
  expectCleanStderr(r.stderr);
}

describe('--noise', () => {
  test('NaN values: refused, naming --noise and the count', async () => {
    const p = await noise('nan.safetensors', 'F32', (i) => (i === 3 || i === 7 ? NaN : 0.5));
    expectRefused(run(['--noise', p]), /--noise .*2 non-finite/);
  });
  test('an infinite value: refused', async () => {
    const p = await noise('inf.safetensors', 'F32', (i) => (i === 0 ? Infinity : 0));
    expectRefused(run(['--noise', p]), /--noise .*non-finite/);
  });
  test('an I32 tensor: refused, naming the dtype', async () => {
    const p = await noise('i32.safetensors', 'I32', () => 1);
    expectRefused(run(['--noise', p]), /--noise .*I32.*float/);
  });
  test('a missing file: exit 2 naming --noise (not 4, model files)', () => {
    expectRefused(run(['--noise', join(dir, 'missing.safetensors')]), /--noise .*no such file/);
  });
  test('a wrong latent shape for this image and --size', async () => {
    const p = await noise('shape.safetensors', 'F32', () => 0, [1, 16, 4, 4]);
    expectRefused(run(['--noise', p]), /--noise .*\[1,16,4,4\].*needs \[1,16,2,4\]/);
  });
  test('not a safetensors file', () => {
    expectRefused(run(['--noise', photo]), /--noise /);
  });
});

describe('numbers', () => {
  test.each([
    ['--cfg', ''], ['--cfg', 'nan'], ['--cfg', 'inf'], ['--cfg', '0x10'], ['--cfg', '6 apples'],
    ['--seed', ''], ['--seed', '-1'], ['--seed', '1.5'], ['--seed', '0x2a'],
    ['--steps', '0x2'], ['--steps', '1e1'], ['--steps', ' 4'], ['--steps', '0'],
    ['--size', '512px'], ['--size', ''],
  ])('%s "%s" is refused before the GPU opens', (opt, v) => {
    expectRefused(run([opt, v]), new RegExp(`${opt} must be a decimal`));
  });

  test.each([
    ['1e400', /too large/],
    ['0.5B', /at least 64 MiB/],
    ['12 parsecs', /cannot parse/],
  ])('--vram-budget %s is refused before the GPU opens', (v, re) => {
    expectRefused(run(['--vram-budget', v]), re as RegExp);
  });

  test('--size 16 on a 4:3 photo says the size is too small and which size works', () => {
    expectRefused(run(['--size', '16']), /--size 16 is too small for a 64x48 image.*--size \d+ or more/);
  });

  test('parsers (unit)', () => {
    expect(intOpt('steps', '28', 1, 1000)).toBe(28);
    expect(floatOpt('cfg', '6.5', 0, 100)).toBe(6.5);
    expect(floatOpt('cfg', '.5', 0, 100)).toBe(0.5);
    expect(floatOpt('cfg', '1e1', 0, 100)).toBe(10);
    expect(parseBytes('12GB')).toBe(12e9);
    expect(parseBytes('800MiB')).toBe(800 * 1024 ** 2);
    expect(() => parseBytes('1e400')).toThrow(/too large/);
    expect(checkSizeLevel(64, 48, 32)).toEqual([32, 16]);
    expect(() => checkSizeLevel(10_000_000, 1, 512)).toThrow(/too elongated/);
  });
});

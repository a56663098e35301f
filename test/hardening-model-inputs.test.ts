/**
 * Issue 21, group 5: a model directory is untrusted input. The chat template renders with bounded work
 * (range() budget), time and output; tokenizer.json(.gz) is type- and size-checked before it is read and
 * inflates to a bounded size; a FIFO in its place is refused instead of blocking.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ExitCode, Step1xError } from '../src/errors.js';
import { renderStep1xChat } from '../src/models/qwen25vl/prompt.js';
import { QwenTokenizer } from '../src/models/qwen25vl/tokenizer.js';

function err(f: () => unknown): Step1xError {
  try {
    f();
  } catch (e) {
    return e as Step1xError;
  }
  throw new Error('no error');
}

test('chat template: range(1e8), nested loops and a huge output fail at once with one line, exit 4', () => {
  const big = err(() => renderStep1xChat('x', 'p', '{% for i in range(100000000) %}x{% endfor %}'));
  expect(big.code).toBe(ExitCode.WEIGHTS);
  expect(big.message).toMatch(/chat template: range\(\) asks for more than 10000 elements/);
  const nested = err(() => renderStep1xChat('x', 'p', '{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}'));
  expect(nested.code).toBe(ExitCode.WEIGHTS);
  expect(nested.message).toMatch(/range\(\) asks for more than|rendering took more than 2 s/); // the budget or the clock, whichever first
  const wide = err(() => renderStep1xChat('x', 'p', `{% for i in range(9999) %}${'y'.repeat(500)}{% endfor %}`));
  expect(wide.message).toMatch(/rendering gave \d+ characters, more than/);
  const long = err(() => renderStep1xChat('x', 'p', 'x'.repeat(70_000)));
  expect(long.message).toMatch(/more than the 65536 a chat template may have/);
  // an ordinary template still renders
  expect(renderStep1xChat('cap', 'pre', '{% for m in messages %}{{ m.role }}{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}')).toBe('user012');
});

test('tokenizer.json.gz inflating past 128 MiB, and a FIFO as tokenizer.json: refused, exit 4', () => {
  const d = mkdtempSync(join(tmpdir(), 'step1x-tok-'));
  writeFileSync(join(d, 'tokenizer.json.gz'), gzipSync(Buffer.alloc(130 << 20, 0x20), { level: 1 }));
  const bomb = err(() => QwenTokenizer.load(d));
  expect(bomb.code).toBe(ExitCode.WEIGHTS);
  expect(bomb.message).toMatch(/inflates to more than 128 MiB/);
  const f = mkdtempSync(join(tmpdir(), 'step1x-tokf-'));
  execFileSync('mkfifo', [join(f, 'tokenizer.json')]);
  const fifo = err(() => QwenTokenizer.load(f));
  expect(fifo.code).toBe(ExitCode.WEIGHTS);
  expect(fifo.message).toMatch(/FIFO/);
});

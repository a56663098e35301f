/**
 * Issue 21, group 7: every line we print that carries a name from outside is sanitised. Progress and
 * result lines (the reporter), errors (one line), warnings: ESC/OSC sequences, NUL and invisible BOMs are
 * shown as \uXXXX, never sent raw to the terminal.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createReporter } from '../src/cli/progress.js';
import { sanitizeForTerminal } from '../src/cli/sanitize.js';
import { step1x } from './util/cli-run.js';

const HOSTILE = 'a\u001b]0;pwned\u0007b\u0000c\ufeffd\u001b[2J.png';
const RAW = /[\u0000\u0007\u001b\ufeff]/;

test('the reporter sanitises every line (plain mode, as in CI logs)', () => {
  let out = '';
  const stream = { write: (s: string) => void (out += s), isTTY: false } as unknown as NodeJS.WriteStream;
  const rep = createReporter({ stream, env: { CI: '1' } });
  rep.update(`reading ${HOSTILE}`);
  rep.progress(`label ${HOSTILE}`, 1, 2, HOSTILE);
  rep.done(`[1/2] ${HOSTILE} → out`);
  rep.fail(`[2/2] ${HOSTILE}: failed`);
  expect(out).not.toMatch(RAW);
  expect(out).toContain('a\\u001b]0;pwned\\u0007b\\u0000c\\ufeffd');
  expect(sanitizeForTerminal('x\u200by\u2060z')).toBe('x\\u200by\\u2060z');
});

test('CLI: a manifest key with ESC/OSC/NUL/BOM is refused in one sanitised line', () => {
  const d = mkdtempSync(join(tmpdir(), 'step1x-pr-'));
  const man = join(d, 'm.json');
  writeFileSync(man, JSON.stringify({ [HOSTILE]: 'x' }));
  const r = step1x(['batch', man, '--input-dir', d, '--output-dir', join(d, 'o'), '--model', '/nonexistent']);
  expect(r.code).toBe(2);
  expect(r.stderr).not.toMatch(RAW);
  expect(r.stderr).toMatch(/is not a relative path inside --input-dir/);
});

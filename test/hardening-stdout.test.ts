/**
 * Issue 21, group 3: a closed stdout (`>&-`, which Node reopens on /dev/null) or a full one (/dev/full)
 * is an error (exit 7), found before any model work where the command knows it will write there; and a
 * slow reader of `inspect` gets every byte (the process no longer exits 50 ms after the command ends
 * with output still queued).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildHeader } from '../src/io/safetensors.js';
import { step1xSh, tempPhoto, TINY_MODEL } from './util/cli-run.js';

const dir = mkdtempSync(join(tmpdir(), 'step1x-so-'));
const { photo } = tempPhoto('step1x-so-');

/** A header-only-sized checkpoint with 20k tensors: `inspect --json` prints a few MB. */
function manyTensors(): string {
  const entries = Array.from({ length: 20_000 }, (_, i) => ({ name: `blocks.${i}.some_rather_long_tensor_name.weight`, dtype: 'F32' as const, shape: [1] }));
  const { prefix, dataBytes } = buildHeader(entries);
  const p = join(dir, 'many.safetensors');
  writeFileSync(p, Buffer.concat([Buffer.from(prefix), Buffer.alloc(dataBytes)]));
  return p;
}

test('stdout closed (>&-): inspect, --json and -o - exit 7 with one line; -o - before any model work', () => {
  const vae = join(TINY_MODEL, 'vae.safetensors');
  const a = step1xSh(`node "$CLI" inspect ${vae} >&-`);
  expect(a.code).toBe(7);
  expect(a.stderr).toMatch(/stdout is closed \(EBADF\)/);
  const b = step1xSh(`node "$CLI" edit ${photo} x --model /nonexistent -o - >&-`);
  expect(b.code).toBe(7); // not 4: refused before the (missing) model is even looked for
  expect(b.stderr).toMatch(/cannot write the image to stdout: stdout is closed/);
  const c = step1xSh(`node "$CLI" edit ${photo} x --model /nonexistent -o ${join(dir, 'o.png')} --json >&-`);
  expect(c.code).toBe(7);
  expect(c.stderr).toMatch(/--json: stdout is closed/);
  // a shell's >/dev/null is a deliberate sink, not a closed stdout
  expect(step1xSh(`node "$CLI" inspect ${vae} >/dev/null`).code).toBe(0);
});

test('inspect --json >/dev/full: exit 7 naming ENOSPC', () => {
  const r = step1xSh(`node "$CLI" inspect ${join(TINY_MODEL, 'vae.safetensors')} --json >/dev/full`);
  expect(r.code).toBe(7);
  expect(r.stderr).toMatch(/ENOSPC/);
});

test('inspect --json of a 20k-tensor file piped into a slow reader: every byte arrives', () => {
  const f = manyTensors();
  const whole = step1xSh(`node "$CLI" inspect ${f} --json | wc -c`);
  const slow = step1xSh(`node "$CLI" inspect ${f} --json | (sleep 2; wc -c)`);
  expect(slow.code).toBe(0);
  expect(Number(whole.stdout.trim())).toBeGreaterThan(1 << 20);
  expect(Number(slow.stdout.trim())).toBe(Number(whole.stdout.trim()));
}, 120_000);

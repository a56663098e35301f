/**
 * Where a golden case lives for the tests: the in-repo copy under test/golden/<name> (so `npm test`
 * passes on a fresh clone), else ../shared/golden/<name>. Throws if neither exists.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export function goldenCase(name: string): string {
  for (const d of [join(ROOT, 'test/golden', name), join(ROOT, '../shared/golden', name)])
    if (existsSync(join(d, 'case.json')) || existsSync(d)) return d;
  throw new Error(`golden case ${name} not found in test/golden or ../shared/golden`);
}

export const REPO_ROOT = ROOT;

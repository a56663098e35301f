/**
 * The in-repo golden copies (test/golden, so that `npm test` passes on a clone without ../shared) stay in
 * sync with ../shared/golden: every JSON file of a copied case (case.json with its tolerance list,
 * real_shapes descriptions) must equal the shared one. Weight and io files are large and never change
 * without case.json changing. Without ../shared the check is a counted, printed skip.
 * STEP1X_SHARED_GOLDEN overrides where the shared cases are (default: <repo>/../shared/golden).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './util/golden-path.js';
import { testUnless } from './util/skip.js';

const SHARED = process.env.STEP1X_SHARED_GOLDEN ?? join(REPO_ROOT, '../shared/golden');
const LOCAL = join(REPO_ROOT, 'test/golden');
const present = existsSync(join(SHARED, 'README.md'));

const cases = readdirSync(LOCAL).filter((n) => statSync(join(LOCAL, n)).isDirectory());

test('test/golden holds the cases the tests use, each with its case.json or JSON description', () => {
  expect(cases.length).toBeGreaterThanOrEqual(10);
  for (const c of cases) expect(readdirSync(join(LOCAL, c)).some((f) => f.endsWith('.json'))).toBe(true);
});

testUnless(present ? undefined : `${SHARED} not present (set STEP1X_SHARED_GOLDEN)`, 'every in-repo JSON file of a golden case equals the one in ../shared/golden', () => {
  const stale: string[] = [];
  let compared = 0;
  for (const c of cases) {
    if (!existsSync(join(SHARED, c))) {
      stale.push(`${c}: not in ${SHARED}`);
      continue;
    }
    for (const f of readdirSync(join(LOCAL, c)).filter((f) => f.endsWith('.json'))) {
      const shared = join(SHARED, c, f);
      if (!existsSync(shared)) {
        stale.push(`${c}/${f}: not in ${SHARED}`);
        continue;
      }
      compared++;
      const a = JSON.parse(readFileSync(join(LOCAL, c, f), 'utf8')), b = JSON.parse(readFileSync(shared, 'utf8'));
      if (JSON.stringify(a) !== JSON.stringify(b)) stale.push(`${c}/${f} differs from ${shared}: copy it (cp ${shared} test/golden/${c}/${f})`);
    }
  }
  if (stale.length) throw new Error(`stale golden copies:\n${stale.join('\n')}`);
  expect(compared).toBeGreaterThanOrEqual(cases.length);
});

testUnless(present ? undefined : `${SHARED} not present (set STEP1X_SHARED_GOLDEN)`, 'the in-repo golden README equals the shared one', () => {
  expect(readFileSync(join(LOCAL, 'README.md'), 'utf8') === readFileSync(join(SHARED, 'README.md'), 'utf8')).toBe(true);
});

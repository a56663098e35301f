/**
 * The dependency rule of the source tree: cli → golden → pipeline → models → nn → ops → runtime, with io
 * (files, no GPU) below pipeline. A file may import its own layer or any layer below it; an import that
 * points up (a back-edge) fails here with the file and the import named. Type-only imports count too.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { REPO_ROOT } from './util/golden-path.js';

const RANK: Record<string, number> = { runtime: 0, io: 0, ops: 1, nn: 2, models: 3, pipeline: 4, golden: 5, cli: 6 };
// io reads files only: besides itself it may use the host-side half-float helpers of the runtime
const IO_MAY_USE = new Set(['src/runtime/half.ts']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

test('no import points up the layers', () => {
  const src = join(REPO_ROOT, 'src');
  const bad: string[] = [];
  let checked = 0;
  for (const f of files(src)) {
    const layer = relative(src, f).split('/')[0];
    if (!(layer in RANK)) continue;
    for (const m of readFileSync(f, 'utf8').matchAll(/from '(\.[^']+)'/g)) {
      const target = relative(REPO_ROOT, normalize(join(dirname(f), m[1]))).replace(/\.js$/, '.ts');
      const tl = target.split('/')[1];
      if (!target.startsWith('src/') || !(tl in RANK) || tl === layer) continue;
      checked++;
      const up = RANK[tl] > RANK[layer] || (layer === 'io' && !IO_MAY_USE.has(target)) || (tl === 'io' && RANK[layer] < RANK.pipeline && layer !== 'models' && layer !== 'nn');
      if (up) bad.push(`${relative(REPO_ROOT, f)} imports ${m[1]}`);
    }
  }
  expect(checked).toBeGreaterThan(50);
  expect(bad).toEqual([]);
});

/**
 * The v1.2 cases as ../shared/golden stores them: v12_e2e_tiny's model directory lacks its text encoder and
 * tokenizer (`spec.shared_files`: byte-identical files of tiny_e2e / tiny_e2e_v11, stored once), and the
 * cases naming it in `spec.model_from` (v12_thinker_greedy_tiny, v12_loop_scripted) must apply them too.
 * The repo's copies have those files linked in place, so the other tests never see this layout; here it is
 * rebuilt in a temp folder from the repo's copies, without the shared files.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { modelFrom } from '../src/golden/kinds/v12_e2e.js';
import { readDiffusersDir } from '../src/io/diffusers-layout.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

let root: string;

/** Link every file of src into dst except the relative paths in `skip` (with or without .gz). */
function linkTree(src: string, dst: string, skip: Set<string>, rel = ''): void {
  mkdirSync(dst, { recursive: true });
  for (const e of readdirSync(src)) {
    const r = rel ? `${rel}/${e}` : e;
    if (skip.has(r) || skip.has(r.replace(/\.gz$/, ''))) continue;
    if (statSync(join(src, e)).isDirectory()) linkTree(join(src, e), join(dst, e), skip, r);
    else symlinkSync(resolve(src, e), join(dst, e));
  }
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'step1x-shared-layout-'));
  for (const c of ['tiny_e2e', 'tiny_e2e_v11', 'v12_thinker_greedy_tiny']) symlinkSync(goldenCase(c), join(root, c));
  const v12 = goldenCase('v12_e2e_tiny');
  const shared = JSON.parse(readFileSync(join(v12, 'case.json'), 'utf8')).spec.shared_files as { to: string }[];
  linkTree(v12, join(root, 'v12_e2e_tiny'), new Set(shared.map((s) => s.to)));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

test('the layout is the shared one: v12_e2e_tiny has no text encoder weights of its own', () => {
  expect(existsSync(join(root, 'v12_e2e_tiny/model/text_encoder/model.safetensors.index.json'))).toBe(false);
  expect(() => readDiffusersDir(join(root, 'v12_e2e_tiny/model'))).toThrow(/text_encoder/);
});

test('modelFrom applies the named case\'s shared files (sha256 checked) in a temporary model directory', () => {
  const ctx = { caseDir: join(root, 'v12_thinker_greedy_tiny'), spec: { model_from: 'v12_e2e_tiny' } };
  const m = modelFrom(ctx as never);
  try {
    const d = readDiffusersDir(m.dir);
    expect(existsSync(join(d.textEncoderDir, 'model.safetensors.index.json'))).toBe(true);
  } finally {
    m.cleanup();
  }
  expect(existsSync(m.dir)).toBe(false);
});

test('v12_thinker loads its model through spec.model_from in the shared layout', async () => {
  // the case with no calls: the run loads the model and tokenizer, then has nothing to emit, so every out.*
  // is reported "not computed" — and nothing else fails (before the fix the model was missing: exit 3)
  const dir = join(root, 'v12_thinker_nocalls');
  cpSync(join(root, 'v12_thinker_greedy_tiny'), dir, { recursive: true, dereference: true });
  const cj = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
  writeFileSync(join(dir, 'case.json'), JSON.stringify({ ...cj, calls: [] }));
  const res = await runGolden(dir, { gpu: await getGpu(), log: () => undefined });
  const failed = res.details.filter((d) => !d.pass);
  expect(failed.length).toBeGreaterThan(0);
  expect(failed.filter((d) => !/not computed/.test(d.note ?? ''))).toEqual([]);
}, 300_000);

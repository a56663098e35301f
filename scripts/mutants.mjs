#!/usr/bin/env node
/**
 * `npm run mutants`: plant each bug of the acceptance list (issue 15) in a scratch copy of this working
 * tree, one at a time, rebuild, run the tests that must notice it, and report which were caught. Exit 0
 * only when every mutant was applied and caught. The working tree itself is never modified.
 *
 *   npm run mutants                 all mutants, their relevant test files
 *   npm run mutants -- gelu-erf     only the named ones
 *   npm run mutants -- --full       run the whole `npm test` for each mutant (slow: ≈ 3 min each)
 *   npm run mutants -- --keep       keep the scratch copy (its path is printed)
 *
 * A mutant is a list of exact text replacements; each `from` must occur exactly once in its file (else the
 * mutant is reported NOT APPLIED: the code moved, update the list here).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** @type {{ id: string, what: string, edits: { file: string, from: string, to: string }[], tests: string[], filter?: string }[]} */
const MUTANTS = [
  {
    id: 'gelu-erf',
    what: 'GELU-erf instead of GELU-tanh in the DiT double-block MLP',
    edits: [
      { file: 'src/models/dit-blocks.ts', from: "const mlp = (): Mlp => [new Linear(M, H), 'gelu_tanh', new Linear(H, M)];", to: "const mlp = (): Mlp => [new Linear(M, H), 'gelu_erf', new Linear(H, M)];" },
    ],
    tests: ['test/dit.test.ts'],
  },
  {
    id: 'oom-retry-removed',
    what: 'the out-of-memory re-plan and retry removed (the error is rethrown)',
    edits: [{ file: 'src/pipeline/stages.ts', from: '    return stage(next.budget);', to: '    throw e;' }],
    tests: ['test/pipeline.test.ts'],
    filter: 'out of GPU memory',
  },
  {
    id: 'cfg-metadata-dropped',
    what: '`cfg` dropped from the PNG metadata',
    edits: [{ file: 'src/pipeline/edit-pipeline.ts', from: '      cfg: String(cfg),\n', to: '' }],
    tests: ['test/edit-cli.test.ts'],
    filter: 'every PNG metadata key',
  },
  {
    id: 'batch-first-instruction',
    what: 'batch gives every image the first instruction',
    edits: [{ file: 'src/cli/batch.ts', from: 'runOne(pipe, { ...base, image, instruction: e.instruction }, { path: e.output }, rep, meta)', to: 'runOne(pipe, { ...base, image, instruction: (plan.run[0] ?? e).instruction }, { path: e.output }, rep, meta)' }],
    tests: ['test/edit-cli.test.ts'],
    filter: 'batch',
  },
  {
    id: 'upload-streams-overlap',
    what: 'streamed uploads started together share the uploader\'s buffers at once (no queue)',
    edits: [{ file: 'src/runtime/upload-ring.ts', from: '    this.lock = new Promise((r) => (release = r));\n    await prev;\n', to: '    this.lock = new Promise((r) => (release = r));\n    void prev;\n' }],
    tests: ['test/upload-modes.test.ts'],
    filter: 'bit-identical',
  },
  {
    id: 'upload-ring-pad-kept',
    what: 'the ring leaves an odd tail\'s pad bytes as the slot held them (stale bytes past the data)',
    edits: [{ file: 'src/runtime/upload-ring.ts', from: '    s.view!.fill(0, len, len4);\n', to: '' }],
    tests: ['test/upload-modes.test.ts'],
    filter: 'Uploader',
  },
  {
    id: 'ignore-exif-inverted',
    what: '--ignore-exif inverted (orientation applied only when asked to ignore it)',
    edits: [{ file: 'src/io/image.ts', from: 'const applyOrientation = !opts.ignoreExif && orientation !== 1;', to: 'const applyOrientation = !!opts.ignoreExif && orientation !== 1;' }],
    tests: ['test/image.test.ts', 'test/edit-cli.test.ts'],
    filter: 'EXIF',
  },
  {
    id: 'xoshiro-rotl-8',
    what: 'xoshiro128** output rotation 7 → 8',
    edits: [{ file: 'src/pipeline/rng.ts', from: 'rotl(Math.imul(s[1], 5), 7)', to: 'rotl(Math.imul(s[1], 5), 8)' }],
    tests: ['test/rng.test.ts'],
  },
  {
    id: 'sigint-handler-removed',
    what: 'the SIGINT handler removed (SIGTERM/SIGHUP kept)',
    edits: [{ file: 'src/pipeline/output.ts', from: "for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)", to: "for (const sig of ['SIGTERM', 'SIGHUP'] as const)" }],
    tests: ['test/edit-cli.test.ts'],
    filter: 'interrupt',
  },
];

const args = process.argv.slice(2);
const full = args.includes('--full'), keep = args.includes('--keep');
const only = args.filter((a) => !a.startsWith('--'));
for (const id of only) if (!MUTANTS.some((m) => m.id === id)) {
  console.error(`mutants: unknown mutant "${id}" (known: ${MUTANTS.map((m) => m.id).join(', ')})`);
  process.exit(2);
}
const selected = only.length ? MUTANTS.filter((m) => only.includes(m.id)) : MUTANTS;

// Scratch copy: the tracked and untracked (not ignored) files of this working tree, node_modules linked.
const scratch = mkdtempSync(join(tmpdir(), 'step1x-mutants-'));
const repo = join(scratch, 'repo');
const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
for (const f of files) {
  const src = join(ROOT, f);
  if (!existsSync(src) || f === 'node_modules') continue; // deleted in the work tree; the node_modules symlink
  mkdirSync(dirname(join(repo, f)), { recursive: true });
  cpSync(src, join(repo, f), { dereference: false, recursive: true });
}
symlinkSync(realpathSync(join(ROOT, 'node_modules')), join(repo, 'node_modules'));
console.log(`mutants: scratch copy ${repo} (${files.length} files)`);

const jest = ['--experimental-vm-modules', '--no-warnings', 'node_modules/jest/bin/jest.js', '--runInBand', '--verbose'];
const results = [];
for (const m of selected) {
  const t0 = Date.now();
  const originals = new Map();
  let applied = true, why = '';
  for (const e of m.edits) {
    const p = join(repo, e.file);
    const text = originals.get(p) ?? readFileSync(p, 'utf8');
    if (!originals.has(p)) originals.set(p, text);
    const cur = readFileSync(p, 'utf8');
    const n = cur.split(e.from).length - 1;
    if (n !== 1) {
      applied = false;
      why = `${e.file}: expected the text once, found it ${n} times: ${JSON.stringify(e.from.slice(0, 80))}`;
      break;
    }
    writeFileSync(p, cur.replace(e.from, e.to));
  }
  let caught = false, detail = '';
  if (applied) {
    const build = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: repo, encoding: 'utf8' });
    if (build.status !== 0) {
      applied = false;
      why = `the mutant does not compile (a build failure is not a test catching it):\n${build.stdout}${build.stderr}`;
    } else {
      const cmd = full ? ['npm', ['test', '--silent']] : [process.execPath, [...jest, ...m.tests, ...(m.filter ? ['-t', m.filter] : [])]];
      const r = spawnSync(cmd[0], cmd[1], { cwd: repo, encoding: 'utf8', maxBuffer: 1 << 28 });
      caught = r.status !== 0;
      const out = `${r.stdout}${r.stderr}`;
      const failedNames = [...out.matchAll(/^\s+✕ (.*)$/gm)].map((x) => x.slice(1)[0].replace(/\s+\(\d+ ms\)$/, ''));
      const summary = out.match(/^Tests:.*$/m)?.[0] ?? `exit ${r.status}`;
      detail = `${summary}${failedNames.length ? `\n      failing: ${failedNames.slice(0, 4).join(' | ')}${failedNames.length > 4 ? ` (+${failedNames.length - 4})` : ''}` : ''}`;
    }
  }
  for (const [p, text] of originals) writeFileSync(p, text);
  const s = ((Date.now() - t0) / 1000).toFixed(0);
  const verdict = !applied ? 'NOT APPLIED' : caught ? 'CAUGHT' : 'MISSED';
  results.push({ id: m.id, verdict });
  console.log(`${verdict.padEnd(11)} ${m.id.padEnd(24)} ${m.what} (${full ? 'npm test' : [...m.tests, m.filter ? `-t "${m.filter}"` : ''].join(' ')}; ${s}s)`);
  console.log(`      ${applied ? detail : why}`);
}
const caughtN = results.filter((r) => r.verdict === 'CAUGHT').length;
console.log(`mutants: ${caughtN} of ${results.length} caught${caughtN === results.length ? '' : ` (${results.filter((r) => r.verdict !== 'CAUGHT').map((r) => `${r.id}: ${r.verdict}`).join(', ')})`}`);
if (keep) console.log(`mutants: kept ${scratch}`);
else rmSync(scratch, { recursive: true, force: true });
process.exit(caughtN === results.length ? 0 : 1);

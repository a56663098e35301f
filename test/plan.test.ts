/**
 * `step1x plan` on header-only fakes of the real v1.0 and v1.1 model directories (from the in-repo
 * real_shapes* copies): `--size 1024` fits 16 GB with q8 and 10 GB with q4 (the activations as the pool retains them for a whole stage), a budget too small for any
 * plan is refused naming the minimum; and on the tiny model the measured pool peak of each stage never
 * exceeds the plan's estimate, for several budgets.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { writeFakeRealModel } from './util/fake-model.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };

function step1x(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l && !l.startsWith('Warning:')).join('\n') };
}

let dir = '';
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-plan-'));
  await writeFakeRealModel(join(dir, 'v1.0'), 'v1.0');
  await writeFakeRealModel(join(dir, 'v1.1'), 'v1.1');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('plan on the real model directories (header-only fakes)', () => {
  for (const v of ['v1.0', 'v1.1'])
    test(`${v}: --size 1024 peak <= 16 GB (q8, 16GB) and <= 10 GB (q4, 10GB); too small refused with the minimum`, () => {
      const model = join(dir, v);
      const free = step1x(['plan', '--model', model, '--size', '1024', '--json']);
      expect([free.code, free.stderr]).toEqual([0, '']);
      const all = JSON.parse(free.stdout);
      const rows: string[] = [`${v} bf16 no budget: peak ${all.peak_bytes}`];
      for (const [w, b, limit] of [['q8', '16GB', 16e9], ['q4', '10GB', 10e9]] as const) {
        const r = step1x(['plan', '--model', model, '--size', '1024', '--weights', w, '--vram-budget', b, '--json']);
        expect([r.code, r.stderr]).toEqual([0, '']);
        const p = JSON.parse(r.stdout);
        rows.push(`${v} ${w} ${b}: peak ${p.peak_bytes} (${p.stages.map((s: any) => `${s.stage} res ${s.resident_bytes} str ${s.streamed_bytes} act ${s.activation_bytes}`).join('; ')}), minimum ${p.minimum_budget_bytes}`);
        expect(p.peak_bytes).toBeLessThanOrEqual(limit);
        expect(p.weights).toBe(w);
        expect(p.stages.map((s: any) => s.stage)).toEqual(['embed', 'encode', 'sample', 'decode']);
      }
      process.stderr.write(rows.map((r) => `  ${r}\n`).join(''));
      const tiny = step1x(['plan', '--model', model, '--size', '1024', '--weights', 'q4', '--vram-budget', '2GB']);
      expect(tiny.code).toBe(6);
      expect(tiny.stderr).toMatch(/^step1x: error: --vram-budget 2\.00 GB is too small for any plan: the edit needs at least [0-9.]+ GB/);
      expect(tiny.stderr.split('\n')).toHaveLength(1);
      const human = step1x(['plan', '--model', model, '--size', '1024', '--weights', 'q8', '--vram-budget', '16GB']);
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/^sample\s+dit/m);
    });

  test('--think / --reflect on a v1.0 / v1.1 directory: a one-line usage error (only v1.2 has the thinker)', () => {
    for (const flag of ['--think', '--reflect']) {
      const r = step1x(['plan', '--model', join(dir, 'v1.1'), flag]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`step1x: error: --think / --reflect need a v1.2 model directory (diffusers layout); ${join(dir, 'v1.1')} is not one`);
      expect(r.stdout).toBe('');
    }
  });

  test('bad --weights is a one-line usage error', () => {
    const r = step1x(['plan', '--model', join(dir, 'v1.0'), '--weights', 'q3']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('step1x: error: --weights must be one of bf16, fp8, q8, q4, got "q3"');
  });
});

export const TINY_MODEL = join(goldenCase('tiny_e2e'), 'model');

/**
 * The real stepfun-ai/Step1X-Edit-v1p2 layout (header-only fake from test/golden/real_shapes_v12): `inspect`
 * names the diffusers layout and v1.2 and lists its three weight components; `plan` sizes a 1024² edit
 * from transformer/config.json and the key sets (every diffusers tensor checked), within 80 GB at bf16,
 * 24 GB at q8 and 16 GB at q4.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './util/golden-path.js';
import { writeFakeV12Model } from './util/fake-model.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const step1x = (args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, STEP1X_MODEL: '', XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

let dir = '';
beforeAll(async () => {
  dir = await writeFakeV12Model(join(mkdtempSync(join(tmpdir(), 'step1x-v12-')), 'Step1X-Edit-v1p2'));
});
afterAll(() => rmSync(join(dir, '..'), { recursive: true, force: true }));

test('inspect names the diffusers layout and v1.2, with the real tensor counts', () => {
  const r = step1x(['inspect', '--json', dir]);
  expect([r.code, r.stderr]).toEqual([0, '']);
  const j = JSON.parse(r.stdout);
  expect([j.layout, j.version, j.pipeline]).toEqual(['diffusers', 'v1.2', 'Step1XEditPipelineV1P2']);
  expect(j.checkpoints.map((c: any) => [c.path.split('/').pop(), c.files, c.totals.count])).toEqual([['transformer', 3, 1198], ['text_encoder', 4, 729], ['vae', 1, 244]]);
  const human = step1x(['inspect', dir]);
  expect(human.stdout.split('\n')[0]).toMatch(/model directory, diffusers layout, Step1X-Edit v1\.2 \(Step1XEditPipelineV1P2\)$/);
});

test('plan a 1024² edit: bf16 within 80 GB, q8 within 24 GB, q4 within 16 GB', () => {
  const rows: string[] = [];
  for (const [w, b, limit] of [['bf16', '80GB', 80e9], ['q8', '24GB', 24e9], ['q4', '16GB', 16e9]] as const) {
    const r = step1x(['plan', '--model', dir, '--size', '1024', '--weights', w, '--vram-budget', b, '--json']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const p = JSON.parse(r.stdout);
    expect([p.layout, p.version, p.weights]).toEqual(['diffusers', 'v1.2', w]);
    expect(p.stages.map((s: any) => s.stage)).toEqual(['embed', 'encode', 'sample', 'decode']);
    rows.push(`v1.2 ${w} ${b}: peak ${p.peak_bytes}, minimum ${p.minimum_budget_bytes}`);
    expect(p.peak_bytes).toBeLessThanOrEqual(limit);
  }
  process.stderr.write(rows.map((r) => `  ${r}\n`).join(''));
  const human = step1x(['plan', '--model', dir, '--size', '1024', '--weights', 'q8', '--vram-budget', '24GB']);
  expect(human.stdout.split('\n')[0]).toMatch(/^model: Step1X-Edit v1\.2, diffusers layout/);
});

/**
 * `step1x golden` on v12_e2e_tiny (the whole v1.2 edit, kind v12_e2e): every tensor of the case compared at
 * its tolerance, none skipped — the reference outputs and the slow-processor variant alike.
 */
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { formatDetail } from '../src/golden/compare.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

test('v12_e2e_tiny passes with nothing skipped', async () => {
  const g = await getGpu();
  const r = await runGolden(goldenCase('v12_e2e_tiny'), { gpu: g, log: () => undefined });
  const bad = r.details.filter((d) => !d.pass || d.skipped).map(formatDetail);
  process.stderr.write(r.details.filter((d) => d.name.startsWith('out.')).map(formatDetail).join('\n') + '\n');
  expect(bad).toEqual([]);
  expect(r.report.tensors.length).toBe(77);
  expect(r.report.pass).toBe(true);
});

test('step1x edit on v12_e2e_tiny/model with the case photo, prompt, settings and --noise (noise + ref_eps) writes out.rgb_u8 within its tolerance', async () => {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { SafetensorsFile, writeSafetensors } = await import('../src/io/safetensors.js');
  const { writePng, readImage } = await import('../src/io/image.js');
  const { REPO_ROOT } = await import('./util/golden-path.js');
  const { expectU8Within } = await import('./util/u8-image.js');
  const caseDir = goldenCase('v12_e2e_tiny');
  const spec = JSON.parse((await import('node:fs')).readFileSync(join(caseDir, 'case.json'), 'utf8')).spec;
  const d = mkdtempSync(join(tmpdir(), 'step1x-v12cli-'));
  const f = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
  try {
    const [H, W] = f.tensors.get('in.photo_u8')!.shape;
    await writePng(join(d, 'photo.png'), { width: W, height: H, data: await f.readBytes('in.photo_u8') });
    const lat = f.tensors.get('in.noise')!.shape;
    await writeSafetensors(join(d, 'noise.safetensors'), {
      noise: { dtype: 'F32', shape: lat, data: await f.readF32('in.noise') },
      ref_eps: { dtype: 'F32', shape: lat, data: await f.readF32('in.sample_eps') },
    });
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'bin/step1x.js'), 'edit', join(d, 'photo.png'), spec.prompt, '--model', join(caseDir, 'model'),
      '--size', String(spec.size_level), '--steps', String(spec.num_steps), '--cfg', String(spec.cfg), '--noise', join(d, 'noise.safetensors'), '-o', join(d, 'out.png')],
    { encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } });
    if (r.status !== 0) throw new Error(`step1x edit exited ${r.status}: ${r.stderr}`);
    expect(r.stderr).toMatch(/v1\.2 edit: 4 steps, cfg 6, 80x64/);
    const out = await readImage(join(d, 'out.png'));
    expect([out.width, out.height]).toEqual([W, H]);
    expectU8Within('out.rgb_u8', out.data, await f.readBytes('out.rgb_u8'), 1, 0.02);
  } finally {
    await f.close();
    rmSync(d, { recursive: true, force: true });
  }
});

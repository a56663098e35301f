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

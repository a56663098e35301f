import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase } from './util/golden-path.js';
import { runGolden } from '../src/golden/runner.js';
afterAll(releaseGpu);
test('total', async () => {
  const g = await getGpu();
  const t0 = Date.now();
  const r = await runGolden(goldenCase('vae_tiny'), { gpu: g, log: () => undefined });
  const t1 = Date.now();
  await runGolden(goldenCase('vae_tiny'), { gpu: g, log: () => undefined });
  process.stderr.write(`first ${t1 - t0} ms, second ${Date.now() - t1} ms, pass ${r.report.pass}\n`);
});

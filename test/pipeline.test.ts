/**
 * The edit pipeline against the official one: pipeline_tiny (fixed MLLM embeddings) and tiny_e2e (the whole
 * edit from a model directory) through the golden runner, every stage at the cases' tolerances; and the same
 * e2e edit under a tiny GPU budget (Qwen layers and DiT blocks streamed from disk) gives the same image.
 */
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase } from './util/golden-path.js';
import { runGolden } from '../src/golden/runner.js';
import { formatDetail } from '../src/golden/compare.js';
import { modelFilesInDir } from '../src/io/model-files.js';
import { EditPipeline } from '../src/pipeline/edit-pipeline.js';
import { SafetensorsFile } from '../src/io/safetensors.js';

afterAll(releaseGpu);

test.each(['pipeline_tiny', 'tiny_e2e'])('%s: every stage within the case tolerances, nothing skipped', async (name) => {
  const g = await getGpu();
  const r = await runGolden(goldenCase(name), { gpu: g, log: () => undefined });
  const failed = r.details.filter((d) => !d.pass).map(formatDetail);
  if (failed.length) throw new Error(`${name}:\n${failed.join('\n')}`);
  expect(r.report.pass).toBe(true);
  expect(r.report.tensors.filter((t) => t.skipped).map((t) => t.name)).toEqual([]);
  expect(r.report.tensors.filter((t) => t.name.startsWith('out.')).length).toBeGreaterThanOrEqual(1);
});

test('under a GPU budget the edit gives the identical image', async () => {
  // The tiny model is too small for a budget to force streaming (its DiT has two blocks, which the
  // planner must hold anyway); streaming itself is proven bit-identical in test/dit.test.ts and
  // test/qwen.test.ts. Here: the budgeted path (pool cache cap, residency planning) changes nothing.
  const g = await getGpu();
  const dir = goldenCase('tiny_e2e');
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  const image = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  const noise = await io.readF32('in.noise');
  await io.close();
  const req = { image, instruction: 'add snow', size: 80, steps: 2, cfg: 6, noise };
  const files = modelFilesInDir(join(dir, 'model'));
  const resident = await (await EditPipeline.load(files, { gpu: g })).edit(req);
  const cached = g.pool.maxCachedBytes;
  try {
    const budgeted = await (await EditPipeline.load(files, { gpu: g, vramBudget: 1_600_000 })).edit(req);
    expect(Buffer.from(budgeted.image.data).equals(Buffer.from(resident.image.data))).toBe(true);
    expect(g.pool.maxCachedBytes).toBe(160_000); // a tenth of the budget
    await expect((await EditPipeline.load(files, { gpu: g, vramBudget: 500_000 })).edit(req)).rejects.toThrow(/GPU budget .* is too small for the DiT/);
  } finally {
    g.pool.maxCachedBytes = cached;
  }
});

/**
 * One VRAM plan for the whole edit (pipeline/plan.ts) against what the tiny end-to-end model really does:
 * the measured pool peak of an edit never exceeds the plan's estimate (several budgets); when the plan
 * keeps every model resident, a batch of edits loads Qwen, the VAE and the DiT once (loads counted) and
 * gives the same images as loading per stage; when it does not, models load per stage as before.
 */
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase } from './util/golden-path.js';
import { modelFilesInDir } from '../src/io/model-files.js';
import { EditPipeline } from '../src/pipeline/edit-pipeline.js';
import { planEdit } from '../src/pipeline/plan.js';
import { SafetensorsFile } from '../src/io/safetensors.js';

afterAll(releaseGpu);

test('batch: loads counted, peaks under the plan, same images resident or per stage', async () => {
  const g = await getGpu();
  const dir = goldenCase('tiny_e2e');
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  const image = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  const noise = await io.readF32('in.noise');
  await io.close();
  const files = modelFilesInDir(join(dir, 'model'));
  const reqs = [
    { image, instruction: 'add snow', size: 80, steps: 2, cfg: 6, noise },
    { image, instruction: 'make it night', size: 80, steps: 2, cfg: 6, noise },
  ];
  const cached = g.pool.maxCachedBytes;
  const lines: string[] = [];
  const images: Record<string, Buffer[]> = {};
  try {
    for (const budget of [undefined, 400e6, 20.5e6]) {
      const plan = await planEdit(files, { size: 80, budget });
      const pipe = await EditPipeline.load(files, { gpu: g, vramBudget: budget });
      const got: Buffer[] = [];
      for (const req of reqs) {
        await g.sync();
        const base = g.pool.liveBytes;
        const r = await pipe.edit(req);
        const peak = r.peakGpuBytes - base;
        lines.push(`budget ${budget ?? 'none'}: keep ${plan.keep_resident}, measured peak ${peak} B <= planned live peak ${plan.peak_bytes - plan.cache_bytes} B`);
        expect(peak).toBeLessThanOrEqual(plan.peak_bytes - plan.cache_bytes);
        got.push(Buffer.from(r.image.data));
      }
      const keep = budget !== undefined && plan.keep_resident;
      lines.push(`  loads ${JSON.stringify(pipe.models.loads)}`);
      expect(pipe.models.loads).toEqual(keep ? { qwen: 1, vae: 1, dit: 1 } : { qwen: 2, vae: 4, dit: 2 });
      await pipe.close();
      images[String(budget)] = got;
    }
    process.stderr.write(lines.map((l) => `  ${l}\n`).join(''));
    for (const k of Object.keys(images)) for (let i = 0; i < reqs.length; i++) expect(images[k][i].equals(images.undefined[i])).toBe(true);
    expect(images.undefined[0].equals(images.undefined[1])).toBe(false);
  } finally {
    g.pool.maxCachedBytes = cached;
  }
});

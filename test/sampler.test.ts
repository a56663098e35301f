/**
 * sampler_tiny golden on the GPU: the real tiny DiT inside ImageGenerator.denoise — timesteps, every
 * step's t_vec / pred_raw / pred_guided / latent_after, out.latent_packed, out.latent, the schedule
 * table and the trunc.* (diff-norm CFG) rerun, at case.json tolerances; then again with every block
 * streamed from disk (identical results).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { getGpu, releaseGpu, compare } from '../kernels-test/harness.js';
import { compareTensor, findTolerance, formatDetail } from '../src/golden/compare.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import type { runSampler as RunSampler } from '../src/golden/kinds/sampler.js';

afterAll(releaseGpu);

const runSampler: typeof RunSampler = async (...a) => (await import('../src/golden/kinds/sampler.js')).runSampler(...a);


async function goldenCtx(name: string) {
  const caseDir = goldenCase(name);
  const caseJson = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
  const io = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
  const g = await getGpu();
  const emitted = new Map<string, Float32Array>();
  const ctx = {
    caseDir, spec: caseJson.spec, caseJson, io, gpu: g,
    input: (n: string) => io.readF32(n),
    inputInt: async (n: string) => Int32Array.from(await io.readF32(n)),
    has: (n: string) => io.tensors.has(n),
    emit: (n: string, data: Float32Array | Int32Array | Uint8Array) => void emitted.set(n, Float32Array.from(data)),
    log: (m: string) => process.stderr.write(`  ${m}\n`),
  };
  const check = async (): Promise<string[]> => {
    const lines: string[] = [], bad: string[] = [];
    for (const n of io.tensors.keys()) if (!n.startsWith('in.') && !emitted.has(n)) bad.push(`${n} not emitted`);
    for (const [n, data] of emitted) {
      if (!io.tensors.has(n)) continue;
      const d = compareTensor(n, data, await io.readF32(n), findTolerance(caseJson.tolerance, n));
      lines.push(formatDetail(d));
      if (!d.pass) bad.push(formatDetail(d));
    }
    if (bad.length) throw new Error(bad.join('\n'));
    return lines;
  };
  return { ctx: ctx as unknown as Parameters<typeof RunSampler>[0], emitted, check, io };
}

describe('sampler_tiny golden (GPU)', () => {
  let first: Map<string, Float32Array>;

  test('every step, out.latent*, schedule table and trunc.* within tolerance', async () => {
    const { ctx, emitted, check, io } = await goldenCtx('sampler_tiny');
    await runSampler(ctx);
    const lines = await check();
    process.stderr.write(lines.filter((l) => /out\.latent|step3|trunc\.out/.test(l)).map((l) => `  ${l}\n`).join(''));
    expect(lines.length).toBeGreaterThanOrEqual(36); // timesteps, 16 step*, 9 trunc.*, 2 out.latent*, 8 schedules (+ in.* checks)
    first = new Map(emitted);
    await io.close();
  });

  test('all blocks streamed: identical results', async () => {
    const { ctx, emitted, io } = await goldenCtx('sampler_tiny');
    await runSampler(ctx, { maxResidentBlocks: 0 });
    for (const n of ['out.latent_packed', 'trunc.out.latent_packed', 'step2.pred_raw'])
      expect(compare(n, emitted.get(n)!, first.get(n)!, 0, 0).pass).toBe(true);
    await io.close();
  });
});

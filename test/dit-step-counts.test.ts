/**
 * Per-edit constants are computed and uploaded once (models/connector.ts prepare, dit.ts prepareText):
 * on the sampler_tiny DiT, three steps of Step1XEdit.forward without prepared text (every step uploads
 * llm_embedding and the refiner mask and recomputes the masked means, y, c_embedder(mean),
 * input_embedder(x) and vector_in(y): the old per-step work) against three steps of a predictor, with
 * dispatches per step from the profiler (CPU mode: counts per pipeline) and uploads per step from the
 * runtime's counters, readbacks counted on Gpu.readBytes. The predictor's outputs equal the plain
 * forward's bit for bit, its steps after the first upload only the step's own inputs, and it reads back
 * once per step (the prediction).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { Step1XEdit } from '../src/models/dit.js';
import { prepare } from '../src/pipeline/prepare.js';
import type { Gpu } from '../src/runtime/gpu.js';

afterAll(() => releaseGpu());

interface StepCounts {
  dispatches: number;
  uploads: number;
  uploadBytes: number;
  readbacks: number;
}

let readbacks = 0;
async function counted(g: Gpu, f: () => Promise<Float32Array>): Promise<{ out: Float32Array; c: StepCounts }> {
  await g.profileReport({ reset: true });
  const u0 = g.uploadCount, b0 = g.uploadBytes, r0 = readbacks;
  const out = await f();
  const rep = await g.profileReport({ reset: true });
  const dispatches = rep.rows.filter((r) => !r.key.startsWith('(')).reduce((s, r) => s + r.count, 0);
  return { out, c: { dispatches, uploads: g.uploadCount - u0, uploadBytes: g.uploadBytes - b0, readbacks: readbacks - r0 } };
}

test('sampler_tiny: per-step uploads and dispatches without / with the per-edit text conditioning', async () => {
  const dir = goldenCase('sampler_tiny');
  const spec = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).spec ?? {};
  const g = await getGpu();
  const model = await Step1XEdit.open(g, join(dir, 'dit.safetensors'), { dit: spec.dit, connector: spec.connector });
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  g.enableProfiling({ cpuOnly: true });
  const readBytes = g.readBytes;
  g.readBytes = (t) => {
    readbacks++;
    return readBytes.call(g, t);
  };
  try {
    const ls = io.info('in.noise').shape;
    const [B, T] = io.info('in.llm_embedding').shape;
    const llmEmbedding = await io.readF32('in.llm_embedding');
    const mask = await io.readF32('in.mask');
    const p = prepare(await io.readF32('in.noise'), await io.readF32('in.latent_ref'), ls, B, T, model.version);
    const L = 2 * p.h * p.w;
    const ts = [1, 0.75, 0.5];
    const before: StepCounts[] = [], after: StepCounts[] = [];
    const outsBefore: Float32Array[] = [];
    const { pe } = model.ropeFor(p.txtIds.subarray(0, T * 3), p.imgIds.subarray(0, L * 3), 1, T, L); // per edit before too
    for (const t of ts) {
      const { out, c } = await counted(g, async () => {
        const y = await model.forward({ img: p.img, imgIds: p.imgIds, txtIds: p.txtIds, timesteps: [t, t], tVec: [t, t], llmEmbedding, mask, B, L, T, pe });
        const host = await g.readF32(y);
        y.dispose();
        return host;
      });
      before.push(c);
      outsBefore.push(out);
    }
    pe.dispose();
    const pred = model.predictor({ llmEmbedding, mask, imgIds: p.imgIds, txtIds: p.txtIds, T, L });
    try {
      for (const [i, t] of ts.entries()) {
        const { out, c } = await counted(g, () => pred.predict(p.img, B, t));
        after.push(c);
        const d = out.findIndex((v, k) => !Object.is(v, outsBefore[i][k]));
        if (d >= 0) throw new Error(`step ${i}: prediction ${d} is ${out[d]} with prepared text, ${outsBefore[i][d]} without`);
      }
    } finally {
      pred.dispose();
    }
    const fmt = (c: StepCounts) => `${c.dispatches} dispatches, ${c.uploads} uploads (${c.uploadBytes} B), ${c.readbacks} readback`;
    console.log(`per step, sampler_tiny (B=${B}, T=${T}, L=${L}):\n  before (forward re-derives the text): ${fmt(before[1])}\n  after (predictor, steps 2..): ${fmt(after[1])}\n  after, step 1 (prepares the text): ${fmt(after[0])}`);
    const textBytes = llmEmbedding.byteLength + B * T * T * 4; // llm_embedding + refiner mask
    for (const i of [1, 2]) {
      expect(after[i]).toEqual(after[1]);
      expect(after[i].readbacks).toBe(1); // the prediction the sampler needs, nothing else
      expect(before[i].uploadBytes - after[i].uploadBytes).toBeGreaterThanOrEqual(textBytes);
      // input_embedder, global_proj_out, c_embedder (2), vector_in (2): at least 6 dispatches a step saved
      expect(before[i].dispatches - after[i].dispatches).toBeGreaterThanOrEqual(6);
    }
  } finally {
    g.readBytes = readBytes;
    await io.close();
    await model.close();
  }
}, 300_000);

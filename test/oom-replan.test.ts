/**
 * The out-of-memory re-plan at real size, in process on the dry run (STEP1X_DRYRUN=h100; the header-only
 * fake of the real v1.1 directory, 1024², bf16, 1 step): the plan for the H100's 80 GB keeps every model
 * resident; an injected failure of Qwen2.5-VL's resident load with 30 GB held (pipeline/stages.ts
 * oomInjection) makes the run plan again under 27 GB (OOM_MARGIN below), say so in one line, and run that
 * plan: it streams exactly what planEdit — `step1x plan --vram-budget 27000000000` — gives for that budget
 * (DiT blocks, Qwen towers), the dry run's plan peak is the new plan's, and its measured peak stays under it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDryRunModel } from '../kernels-test/dryrun-table.js';
import { Gpu } from '../src/runtime/gpu.js';
import { modelFilesInDir } from '../src/io/model-files.js';
import { EditPipeline } from '../src/pipeline/edit-pipeline.js';
import { planEdit } from '../src/pipeline/plan.js';
import { OOM_MARGIN, planSummary } from '../src/pipeline/run-plan.js';
import { oomInjection } from '../src/pipeline/stages.js';

test('h100 dry run, 1024², bf16: an OOM on a resident load re-plans under a budget below what was held, and the run is that plan', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-replan-'));
  const env = process.env.STEP1X_DRYRUN;
  process.env.STEP1X_DRYRUN = 'h100';
  let g: Gpu | undefined;
  try {
    g = await Gpu.create();
    process.env.STEP1X_DRYRUN = env;
    if (env === undefined) delete process.env.STEP1X_DRYRUN;
    const files = modelFilesInDir(await writeDryRunModel(join(dir, 'model')));
    const size = 1024;
    const first = await planEdit(files, { size, deviceBytes: g.memoryBytes });
    expect(first.keep_resident).toBe(true);
    const held = 30e9;
    oomInjection.residentLoads = 1;
    oomInjection.heldBytes = held;
    const notes: string[] = [];
    const pipe = await EditPipeline.load(files, { gpu: g, onProgress: (p) => void (p.message && notes.push(p.message)) });
    const r = await pipe.edit({ image: { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(128) }, instruction: 'make it blue', size, steps: 1 }, (p) => void (p.message && notes.push(p.message)));
    await pipe.close();
    expect(oomInjection.residentLoads).toBe(0);
    const said = notes.filter((m) => /out of GPU memory/.test(m));
    expect(said).toHaveLength(1);
    const budget = Number(/^Qwen2\.5-VL: out of GPU memory with 30\.00 GB allocated; re-planned under a (\d+)-byte budget \(27\.00 GB\): /.exec(said[0])?.[1]);
    expect(budget).toBe(Math.floor(held * (1 - OOM_MARGIN)));
    const plan = await planEdit(files, { width: r.workingSize[0], height: r.workingSize[1], budget });
    expect(said[0].endsWith(`: ${planSummary(plan)}`)).toBe(true);
    const streams = (s: string) => plan.stages.find((x) => x.stage === s)!.streams;
    const ditRun = notes.map((m) => /^DiT: streaming (\d+) blocks/.exec(m)?.[1]).find(Boolean);
    const qwenRun = notes.map((m) => /^Qwen2\.5-VL: streaming (text)?(?: and )?(vision)? layers/.exec(m)).find(Boolean);
    const d = r.dryrun!;
    process.stderr.write(`  re-plan at ${budget} B: ${planSummary(plan)}; run dit ${ditRun ?? 0} qwen ${qwenRun ? qwenRun.slice(1).filter(Boolean).join('+') : '-'}; peak ${d.peak_bytes} <= plan ${d.plan_peak_bytes}\n`);
    expect(plan.keep_resident).toBe(false);
    expect(streams('sample')).not.toEqual([]); // 27 GB does not hold the bf16 DiT and its 1024² activations
    expect(ditRun ? [`${ditRun} blocks`] : []).toEqual(streams('sample'));
    expect(qwenRun ? qwenRun.slice(1).filter(Boolean) : []).toEqual(streams('embed'));
    expect(d.plan_peak_bytes).toBe(plan.peak_bytes);
    expect(d.peak_bytes).toBeLessThanOrEqual(plan.peak_bytes);
  } finally {
    oomInjection.residentLoads = 0;
    oomInjection.heldBytes = 0;
    if (env === undefined) delete process.env.STEP1X_DRYRUN;
    else process.env.STEP1X_DRYRUN = env;
    g?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
});

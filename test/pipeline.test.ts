/**
 * The edit pipeline against the official one (the cases pipeline_tiny and tiny_e2e themselves run in
 * test/golden-strict.test.ts): the tiny_e2e edit as a request gives the golden image; the
 * out-of-memory re-plan (an injected OOM on Qwen2.5-VL's resident load: the run plans again below what was
 * held, says so in one line, streams what planEdit gives for that budget, and the image is the golden one;
 * with no plan below it, one error naming the minimum); and an edit under a
 * GPU budget that streams the Qwen2.5-VL layers (golden embedding) and refuses a DiT budget below its floor.
 */
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase } from './util/golden-path.js';
import { compareTensor, findTolerance, formatDetail } from '../src/golden/compare.js';
import { modelFilesInDir } from '../src/io/model-files.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { configFromCheckpoint, planResidency } from '../src/models/dit-config.js';
import { EditPipeline, type EditRequest } from '../src/pipeline/edit-pipeline.js';
import { oomInjection } from '../src/pipeline/stages.js';
import { planEdit } from '../src/pipeline/plan.js';
import { OOM_MARGIN, planSummary } from '../src/pipeline/run-plan.js';
import { behaviourOfCase } from '../src/pipeline/official.js';
import { SafetensorsFile } from '../src/io/safetensors.js';

afterAll(releaseGpu);

// The pipeline_tiny and tiny_e2e cases themselves (every stage at the case tolerances) run in
// test/golden-strict.test.ts, every tensor produced from in.* alone.

// ---- the tiny_e2e edit as a request, its golden image -------------------------------------------------

const DIR = goldenCase('tiny_e2e');
const files = modelFilesInDir(join(DIR, 'model'));
let req: EditRequest;
let golden: Uint8Array;

beforeAll(async () => {
  const caseJson = JSON.parse((await import('node:fs')).readFileSync(join(DIR, 'case.json'), 'utf8'));
  const s = caseJson.spec;
  const beh = behaviourOfCase(caseJson); // tiny_e2e follows the May 2025 official code
  const io = await SafetensorsFile.open(join(DIR, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  req = {
    image: { width: W, height: H, data: await io.readBytes('in.photo_u8') },
    instruction: s.prompt, negative: s.negative_prompt, size: s.size_level, steps: s.num_steps, cfg: s.cfg_guidance,
    noise: await io.readF32('in.noise'),
    compat: beh.compat, cfgTruncate: beh.cfgTruncate,
  };
  golden = await io.readBytes('out.rgb_u8');
  await io.close();
});

/** The case's rule for out.rgb_u8: max |diff| ≤ 1 on at most 2 % of the values; numbers in the failure. */
function expectGolden(what: string, img: Uint8Array): void {
  expect(img.length).toBe(golden.length);
  let max = 0, differ = 0;
  for (let i = 0; i < img.length; i++) {
    const d = Math.abs(img[i] - golden[i]);
    if (d) differ++;
    if (d > max) max = d;
  }
  if (max > 1 || differ / img.length > 0.02) throw new Error(`${what}: out.rgb_u8 max |diff| ${max} (≤ 1), differing ${(differ / img.length).toFixed(4)} (≤ 0.02)`);
}

async function editCollecting(opts: { vramBudget?: number }): Promise<{ image: Uint8Array; messages: string[]; workingSize: [number, number] }> {
  const g = await getGpu();
  const messages: string[] = [];
  const pipe = await EditPipeline.load(files, { gpu: g, ...opts, onProgress: (p) => p.message && messages.push(p.message) });
  const res = await pipe.edit(req, (p) => p.message && messages.push(p.message));
  return { image: res.image.data, messages, workingSize: res.workingSize };
}

/** What the run said it streams: DiT blocks and Qwen towers, in the plan's `streams` words. */
function runStreams(notes: string[]): { dit: string[]; qwen: string[] } {
  const dit = notes.map((m) => /^DiT: streaming (\d+) blocks/.exec(m)?.[1]).find(Boolean);
  const qwen = notes.map((m) => /^Qwen2\.5-VL: streaming (text)?(?: and )?(vision)? layers/.exec(m)).find(Boolean);
  return { dit: dit ? [`${dit} blocks`] : [], qwen: qwen ? (qwen.slice(1).filter(Boolean) as string[]) : [] };
}

test('out of GPU memory on a resident load: the run re-plans below what it held, says what changed in one line, runs what `plan` prints for that budget, and gives the golden image', async () => {
  // the injected failure reports a little more than the smallest budget any plan fits, held when it failed
  const [W, H] = [req.image!.width, req.image!.height];
  const min = (await planEdit(files, { size: req.size })).minimum_budget_bytes;
  const held = Math.ceil(min / (1 - OOM_MARGIN)) + 4096;
  oomInjection.residentLoads = 2; // Qwen2.5-VL's resident load; the DiT's too if the new plan kept it resident
  oomInjection.heldBytes = held;
  try {
    const r = await editCollecting({});
    const said = r.messages.filter((m) => /out of GPU memory/.test(m));
    expect(said).toHaveLength(1);
    const m = /^Qwen2\.5-VL: out of GPU memory with [0-9.]+ [MG]B allocated; re-planned under a (\d+)-byte budget \([0-9.]+ [MG]B\): (.+)$/.exec(said[0]);
    expect(m).not.toBeNull();
    const budget = Number(m![1]);
    expect(budget).toBe(Math.floor(held * (1 - OOM_MARGIN)));
    // what `step1x plan --vram-budget <budget>` prints for this working size is what ran
    const plan = await planEdit(files, { width: r.workingSize[0], height: r.workingSize[1], budget });
    const streams = (stage: string) => plan.stages.find((s) => s.stage === stage)!.streams;
    process.stderr.write(`  OOM re-plan (${W}x${H} photo): held ${held}, budget ${budget}: ${m![2]}; plan dit ${JSON.stringify(streams('sample'))} qwen ${JSON.stringify(streams('embed'))}\n`);
    expect(m![2]).toBe(planSummary(plan));
    expect(plan.keep_resident).toBe(false);
    expect(oomInjection.residentLoads).toBe(1); // the DiT loaded under the new plan's budget: not a resident load
    expect(runStreams(r.messages)).toEqual({ dit: streams('sample'), qwen: streams('embed') });
    // (at every budget some plan fits, the tiny models stream nothing: the DiT's floor is above Qwen's resident
    // size. The real-size dry run streams under budgets: test/dryrun.test.ts compares plan and run there.)
    expectGolden('OOM re-plan', r.image);
  } finally {
    oomInjection.residentLoads = 0;
    oomInjection.heldBytes = 0;
  }
});

test('out of GPU memory with no plan below what was held: one error naming the least the edit needs, exit code 6', async () => {
  oomInjection.residentLoads = 1;
  oomInjection.heldBytes = 1000;
  try {
    const err = await editCollecting({}).catch((e) => e);
    expect(err.code).toBe(6);
    expect(String(err.message)).toMatch(/^Qwen2\.5-VL: out of GPU memory with 0\.0 MB allocated, and no plan fits below that \(the edit needs at least [0-9.]+ [MG]B\)/);
  } finally {
    oomInjection.residentLoads = 0;
    oomInjection.heldBytes = 0;
  }
});

test('under a GPU budget the Qwen2.5-VL layers stream and give the golden embedding; the DiT refuses a budget below its floor', async () => {
  // 150 kB is below the tiny Qwen2.5-VL's resident size (≈ 197 kB), so its text and vision layers stream.
  // The tiny DiT cannot stream under any budget: the planner reserves two streamed blocks (current +
  // read-ahead) beside the non-block weights and it has exactly two, so a budget that fits the reserve
  // holds it resident. DiT streaming is covered by the OOM fallback above and bit-exactly in dit.test.ts.
  const g = await getGpu();
  const cached = g.pool.maxCachedBytes;
  const traced = new Map<string, Float32Array | Int32Array | Uint8Array>();
  const messages: string[] = [];
  try {
    const pipe = await EditPipeline.load(files, { gpu: g, vramBudget: 150_000, onProgress: (p) => p.message && messages.push(p.message) });
    const err = await pipe.edit(req, undefined, (n, d) => traced.set(n, d)).catch((e) => e);
    expect(String(err)).toMatch(/GPU budget 0\.1 MiB is too small for the DiT: non-block weights/);
  } finally {
    g.pool.maxCachedBytes = cached;
  }
  expect(messages.join('\n')).toMatch(/Qwen2\.5-VL: streaming text and vision layers from disk under the GPU budget/);
  expect(messages.join('\n')).not.toMatch(/out of GPU memory/);
  const io = await SafetensorsFile.open(join(DIR, 'io.safetensors'));
  try {
    const cj = JSON.parse((await import('node:fs')).readFileSync(join(DIR, 'case.json'), 'utf8'));
    for (const name of ['mid.vision_out', 'mid.llm_embedding']) {
      const got = traced.get(name);
      if (!got) throw new Error(`${name} was not traced before the DiT stage`);
      const d = compareTensor(name, got, await io.readF32(name), findTolerance(cj.tolerance, name));
      if (!d.pass) throw new Error(`streamed Qwen2.5-VL: ${formatDetail(d)}`);
    }
  } finally {
    await io.close();
  }
  // the DiT's floor: its all-resident size; one byte less is refused with the numbers
  const ck = await Checkpoint.open(files.dit);
  try {
    const cfg = configFromCheckpoint(ck.keys(), (n) => (ck.has(n) ? ck.info(n).shape : undefined), files.hparams ?? {});
    const all = planResidency(ck, cfg.dit);
    const floor = all.fixedBytes + all.slots.reduce((a, x) => a + x.bytes, 0);
    expect(all.slots.length).toBe(2);
    expect(planResidency(ck, cfg.dit, { budgetBytes: floor }).resident.size).toBe(2);
    expect(() => planResidency(ck, cfg.dit, { budgetBytes: floor - 1 })).toThrow(/too small for the DiT/);
  } finally {
    await ck.close();
  }
});

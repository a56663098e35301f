/**
 * The options of a v1.2 edit, through the one plan and the stages (pipeline/v12-stages.ts) on the tiny v1.2
 * model of v12_e2e_tiny (diffusers layout; its photo at size level 80 → 80×64, 3 steps):
 *   - plan == run on the GPU: under the plan's smallest budget the run streams what `planEdit` says and loads
 *     per stage (the VAE twice), the image bit-identical to the resident run; a budget that fits every model
 *     keeps them loaded once across two edits (as `batch` does); a --think edit's thinker uses the edit's own
 *     Qwen (one load, kept or per stage); on GPU out-of-memory the run re-plans below
 *     what it held and loads what the plan gives for that budget, the image unchanged;
 *   - --weights q8 stays close to the stored weights; a kohya LoRA in the official names changes the edit,
 *     its module names matching the diffusers transformer (no warning);
 *   - TeaCache skips the middle step at a huge threshold; an all-white mask is the plain edit exactly, a
 *     half-black one keeps the photo's pixels there;
 *   - PNG parameters record version, layout and the options; options v1.2 cannot take are one-line errors.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { goldenCase } from './util/golden-path.js';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { diffusersModelFiles } from '../src/io/model-files.js';
import { EditPipeline, type EditRequest, type LoadOptions, type Progress } from '../src/pipeline/edit-pipeline.js';
import { planEdit } from '../src/pipeline/plan.js';
import { oomInjection } from '../src/pipeline/stages.js';
import { OOM_MARGIN, planSummary } from '../src/pipeline/run-plan.js';
import { LoraFile, checkLoras } from '../src/nn/lora.js';
import { openDitWeights } from '../src/models/diffusers-map.js';
import { Step1XEdit } from '../src/models/dit.js';
import type { RgbImage } from '../src/io/resize.js';

const caseDir = goldenCase('v12_e2e_tiny');
const files = diffusersModelFiles(join(caseDir, 'model'));
let photo: RgbImage, dir = '';
const base = (): EditRequest => ({ image: photo, instruction: 'Write "OPEN 24h" on her shirt and make it snow!', size: 80, steps: 3, seed: 7 });

async function edit(load: Omit<LoadOptions, 'gpu'>, req: Partial<EditRequest> = {}, runs = 1) {
  const notes: string[] = [];
  const pipe = await EditPipeline.load(files, { ...load, gpu: await getGpu(), onProgress: (p: Progress) => void (p.message && notes.push(p.message)) });
  try {
    const res = [];
    for (let i = 0; i < runs; i++) res.push(await pipe.edit({ ...base(), ...req }, (p) => void (p.message && notes.push(p.message))));
    return { res: res[0], all: res, notes, loads: { ...pipe.models.loads } };
  } finally {
    await pipe.close();
  }
}

const diffs = (a: Uint8Array, b: Uint8Array) => {
  let n = 0, max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d) n++;
    max = Math.max(max, d);
  }
  return { n, max };
};

let plain: RgbImage;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-v12opt-'));
  const io = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  photo = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  await io.close();
  const r = await edit({});
  plain = r.res.image;
  expect([r.res.version, r.res.parameters['dit-version'], r.res.parameters.layout, r.res.parameters['working-size']]).toEqual(['v1.2', 'v1.2', 'diffusers', '80x64']);
}, 600_000);
afterAll(() => {
  releaseGpu();
  rmSync(dir, { recursive: true, force: true });
});

test('plan == run: at the plan\'s smallest budget the run streams what the plan says and loads per stage; a budget that fits all keeps each model loaded once over two edits', async () => {
  const budget = (await planEdit(files, { width: 80, height: 64 })).minimum_budget_bytes;
  const plan = await planEdit(files, { width: 80, height: 64, budget });
  const r = await edit({ vramBudget: budget });
  const streams = (s: string) => plan.stages.find((x) => x.stage === s)!.streams;
  const ditRun = r.notes.map((m) => /DiT: streaming (\d+) blocks/.exec(m)?.[1]).find(Boolean);
  const qwenRun = r.notes.map((m) => /Qwen2\.5-VL: streaming (text)?(?: and )?(vision)? layers/.exec(m)).find(Boolean);
  process.stderr.write(`  v1.2 tiny at budget ${budget}: plan dit ${JSON.stringify(streams('sample'))} qwen ${JSON.stringify(streams('embed'))}; run dit ${ditRun ?? 0} qwen ${qwenRun ? qwenRun.slice(1).filter(Boolean).join('+') : '-'}; loads ${JSON.stringify(r.loads)}\n`);
  expect(plan.keep_resident).toBe(false);
  // (the tiny DiT has one block of each kind: the streaming reserve holds them all, so nothing streams here;
  // the real-size dry run in test/dryrun.test.ts is where the plan streams DiT blocks)
  expect(ditRun ? [`${ditRun} blocks`] : []).toEqual(streams('sample'));
  expect(qwenRun ? qwenRun.slice(1).filter(Boolean) : []).toEqual(streams('embed'));
  expect(r.loads).toEqual({ qwen: 1, vae: 2, dit: 1 }); // per stage: the VAE for encode, then for decode
  expect(diffs(r.res.image.data, plain.data).n).toBe(0);
  const roomy = await edit({ vramBudget: 64e9 }, {}, 2);
  expect((await planEdit(files, { width: 80, height: 64, budget: 64e9 })).keep_resident).toBe(true);
  expect(roomy.loads).toEqual({ qwen: 1, vae: 1, dit: 1 });
  for (const x of roomy.all) expect(diffs(x.image.data, plain.data).n).toBe(0);
}, 900_000);

test('--think runs on the edit\'s own Qwen: kept with every model under a roomy budget, per stage at the smallest --think plan (held from the rewrite into the embed stage); Qwen loaded once either way, the same rewrite and image', async () => {
  const reason = { think: true, reflect: false, maxRounds: 1, maxNewTokens: 4, maxRetries: 1 };
  const budget = (await planEdit(files, { width: 80, height: 64, reason: { reflect: false } })).minimum_budget_bytes;
  expect((await planEdit(files, { width: 80, height: 64, reason: { reflect: false }, budget })).keep_resident).toBe(false);
  const roomy = await edit({ vramBudget: 64e9 }, { reason });
  const tight = await edit({ vramBudget: budget }, { reason });
  process.stderr.write(`  v1.2 tiny --think: roomy loads ${JSON.stringify(roomy.loads)}, at ${budget} B loads ${JSON.stringify(tight.loads)}\n`);
  expect(roomy.loads).toEqual({ qwen: 1, vae: 1, dit: 1 });
  expect(tight.loads).toEqual({ qwen: 1, vae: 2, dit: 1 });
  expect(roomy.res.reason!.calls).toBe(1);
  expect(tight.res.reason!.rewritten).toBe(roomy.res.reason!.rewritten);
  expect(diffs(tight.res.image.data, roomy.res.image.data).n).toBe(0);
}, 900_000);

test('out of GPU memory with everything resident: the run re-plans below what it held, says so once, loads what the plan gives for that budget, the image unchanged', async () => {
  const held = Math.ceil((await planEdit(files, { width: 80, height: 64 })).minimum_budget_bytes / (1 - OOM_MARGIN)) + 4096;
  oomInjection.residentLoads = 2; // Qwen's resident load; the DiT's too if the new plan kept it resident
  oomInjection.heldBytes = held;
  try {
    const r = await edit({});
    const said = r.notes.filter((m) => /out of GPU memory/.test(m));
    expect(said.map((m) => m.split(':')[0])).toEqual(['Qwen2.5-VL']);
    const budget = Number(/re-planned under a (\d+)-byte budget/.exec(said[0])?.[1]);
    expect(budget).toBe(Math.floor(held * (1 - OOM_MARGIN)));
    const plan = await planEdit(files, { width: 80, height: 64, budget });
    expect(said[0].endsWith(`: ${planSummary(plan)}`)).toBe(true);
    const streams = (s: string) => plan.stages.find((x) => x.stage === s)!.streams;
    const ditRun = r.notes.map((m) => /DiT: streaming (\d+) blocks/.exec(m)?.[1]).find(Boolean);
    const qwenRun = r.notes.map((m) => /Qwen2\.5-VL: streaming (text)?(?: and )?(vision)? layers/.exec(m)).find(Boolean);
    expect(ditRun ? [`${ditRun} blocks`] : []).toEqual(streams('sample'));
    expect(qwenRun ? qwenRun.slice(1).filter(Boolean) : []).toEqual(streams('embed'));
    expect(oomInjection.residentLoads).toBe(plan.keep_resident ? 0 : 1);
    expect(diffs(r.res.image.data, plain.data).n).toBe(0);
  } finally {
    oomInjection.residentLoads = 0;
    oomInjection.heldBytes = 0;
  }
}, 900_000);

test('the diffusers transformer packs to q8 / q4 from its joined to_q/to_k/to_v rows: one DiT forward within the error of the official layout', async () => {
  const g = await getGpu();
  const L = 8, T = 5;
  const rnd = (n: number, s = 1) => Float32Array.from({ length: n }, (_, i) => s * Math.sin(1.3 * i + 0.7));
  const inp = { img: rnd(L * 64), imgIds: rnd(L * 3), txtIds: rnd(T * 3), timesteps: [0.5], tVec: [0.5], llmEmbedding: rnd(T * 16), mask: new Float32Array(T).fill(1), B: 1, L, T };
  const out: Record<string, Float32Array> = {};
  for (const w of ['stored', 'q8', 'q4'] as const) {
    const m = await Step1XEdit.open(g, files.dit, {}, w === 'stored' ? {} : { weights: { weights: w } });
    const o = await m.forward({ ...inp, contextAdd: await m.textTokenMapping(rnd(T * 16), new Int32Array(T).fill(1), 1, T) });
    out[w] = await g.readF32(o);
    o.dispose();
    await m.close();
  }
  const rel = (a: Float32Array, b: Float32Array) => Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));
  process.stderr.write(`  v1.2 tiny DiT forward vs stored: q8 relL2 ${rel(out.q8, out.stored)}, q4 ${rel(out.q4, out.stored)}\n`);
  expect(rel(out.q8, out.stored)).toBeLessThan(0.02); // 0.70 when the packer read the file range of to_q alone
  expect(rel(out.q4, out.stored)).toBeLessThan(0.3);
}, 300_000);

test('--weights q8 stays close to the stored weights; a LoRA in the official names maps onto the diffusers transformer and changes the edit', async () => {
  const q8 = await edit({ weights: 'q8' });
  const dq = diffs(q8.res.image.data, plain.data);
  process.stderr.write(`  v1.2 tiny q8 vs stored: ${dq.n}/${plain.data.length} values differ, max ${dq.max}\n`);
  expect(q8.res.parameters.weights).toBe('q8');
  expect(dq.max).toBeLessThanOrEqual(16);
  // a rank-2 LoRA on double_blocks.0.img_attn.qkv [192, 64] and single_blocks.0.linear1
  const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => s * Math.sin(1.7 * i + 0.3));
  const path = join(dir, 'lora.safetensors');
  await writeSafetensors(path, {
    'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight': { dtype: 'F32', shape: [2, 64], data: rnd(128, 0.5) },
    'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight': { dtype: 'F32', shape: [192, 2], data: rnd(384, 0.5) },
  });
  const lora = await LoraFile.open(path, 1);
  try {
    const { ckpt } = await openDitWeights(files.dit);
    expect(checkLoras([lora], ckpt)).toBeUndefined(); // every module names a Linear of the transformer
    await ckpt.close();
    const l = await edit({ loras: [lora] });
    const dl = diffs(l.res.image.data, plain.data);
    process.stderr.write(`  v1.2 tiny LoRA vs none: ${dl.n} values differ, max ${dl.max}\n`);
    expect(l.res.parameters.lora).toBe('lora.safetensors:1');
    expect(dl.n).toBeGreaterThan(0);
  } finally {
    await lora.close();
  }
}, 900_000);

test('TeaCache skips the middle step at a huge threshold; masks: all white = the plain edit, black keeps the photo', async () => {
  const c = await edit({}, { cache: { kind: 'teacache', threshold: 10 } });
  expect(c.res.cache).toEqual({ kind: 'teacache', threshold: 10, skippedSteps: 1 });
  expect(c.res.parameters.cache).toBe('teacache:10 (skipped 1 of 3 steps)');
  const mask = (f: (x: number) => number): RgbImage => ({ width: photo.width, height: photo.height, data: Uint8Array.from({ length: photo.width * photo.height * 3 }, (_, i) => f(Math.floor(i / 3) % photo.width)) });
  const white = await edit({}, { mask: mask(() => 255) });
  expect(diffs(white.res.image.data, plain.data).n).toBe(0);
  const half = await edit({}, { mask: mask((x) => (x < photo.width / 2 ? 0 : 255)) });
  expect(half.res.parameters.mask).toBe(`${photo.width}x${photo.height}`);
  let kept = 0, changed = 0;
  for (let p = 0; p < photo.width * photo.height; p++)
    for (let ch = 0; ch < 3; ch++) {
      const i = 3 * p + ch;
      if (p % photo.width < photo.width / 2) kept += +(half.res.image.data[i] === photo.data[i]);
      else changed += +(half.res.image.data[i] !== photo.data[i]);
    }
  expect(kept).toBe(3 * (photo.width / 2) * photo.height);
  expect(changed).toBeGreaterThan(0);
}, 900_000);

test('what v1.2 cannot take is refused by name in one line', async () => {
  const err = async (req: Partial<EditRequest>) => {
    try {
      await edit({}, req);
    } catch (e) {
      return (e as Error).message;
    }
    return 'no error';
  };
  expect(await err({ image: undefined })).toMatch(/^v1\.2 edit: not supported with a v1\.2 model: a text-to-image run/);
  expect(await err({ cfgTruncate: 0.5 })).toMatch(/--cfg-truncate: v1\.2 rescales CFG at every step/);
  expect(await err({ compat: '2025-05' })).toMatch(/--compat 2025-05/);
  expect(await err({ negative: 'blurry' })).toMatch(/--negative/);
}, 300_000);

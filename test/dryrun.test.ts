/**
 * The dry run (STEP1X_DRYRUN, src/runtime/dryrun/): the recorder's deferred-free memory model on a
 * scripted sequence, and `step1x edit` at real size on header-only fakes of the real v1.1 directory
 * (few steps), and of the real v1.2 directory (diffusers layout, real_shapes_v12): the counts the README's
 * table reports, per stage and per DiT step, against the plan; `step1x plan` equals what the run does, also
 * for a v1.2 `--think` edit (the thinker on the edit's one Qwen, model loads counted).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Recorder, type DryRunReport } from '../src/runtime/dryrun/recorder.js';
import { dryRunProfile, PROFILE_IDS } from '../src/runtime/dryrun/index.js';
import { L2_REUSE_BYTES } from '../src/runtime/dryrun/traffic.js';
import { GEMM_SGMAT } from '../src/ops/gemm-params.js';
import { writeDryRunModel, writeSquarePng, TRAFFIC_BEFORE_GB } from '../kernels-test/dryrun-table.js';
import { REPO_ROOT } from './util/golden-path.js';
import { writeFakeV12Model } from './util/fake-model.js';

describe('recorder memory model', () => {
  const buf = (size: number) => ({ size, lastUse: 0, destroyed: false });

  test('a destroyed buffer stays counted until the GPU, lag submits behind, has passed its last use', () => {
    const r = new Recorder({ id: 't', description: 't', memoryBytes: 0 }, 2);
    const a = buf(100), b = buf(10);
    r.created(a);
    r.created(b);
    r.submitted([a]); // serial 1 uses a
    r.destroyed(a); // GPU has completed nothing: pending
    r.submitted([b]); // serial 2: completed up to 0
    r.created(buf(1000)); // 100 (pending) + 10 + 1000
    expect(r.peak).toBe(1110);
    r.submitted([b]); // serial 3: completed up to 1 → a is freed
    r.created(buf(1));
    const rep = r.report();
    expect(rep.peak_bytes).toBe(1110);
    expect(rep.stages[0].buffers_created).toBe(4);
    expect(rep.stages[0].bytes_allocated).toBe(1111);
    expect(rep.stages[0].submits).toBe(3);
  });

  test('a sync completes everything; an unused buffer is freed at once; a written one waits for the next submit', () => {
    const r = new Recorder({ id: 't', description: 't', memoryBytes: 0 }, 4);
    const a = buf(100), w = buf(7);
    r.created(a);
    r.created(w);
    r.submitted([a]);
    r.synced();
    r.destroyed(a); // its submit completed: freed now
    r.written(w);
    r.destroyed(w); // the write is not submitted yet: pending
    r.created(buf(50));
    expect(r.peak).toBe(107);
    r.mark('sample', 1);
    r.submitted([]);
    r.synced();
    r.created(buf(1));
    const rep = r.report();
    expect(rep.steps).toEqual([expect.objectContaining({ step: 1, submits: 1, syncs: 1, buffers_created: 1, peak_bytes: 57 })]);
  });

  test('traffic: bytes bound per dispatch, copies read and written, GEMM re-reads from the tile plan (traffic.ts)', () => {
    const r = new Recorder({ id: 't', description: 't', memoryBytes: 0 }, 2);
    r.mark('sample', 1);
    // 128x128 tiles (2x4 subgroups of 4x2 16x16 fragments), M = N = 1000: 8 x 8 tiles, groups of 2 row blocks
    const sg = { SM: 16, SN: 16, SGM: 2, SGN: 4, PM: 4, PN: 2 };
    const u = (group: number) =>
      GEMM_SGMAT({ M: 1000, N: 1000, K: 64, K4: 16, x_off: 0, w_off: 0, b_off: 0, o_off: 0, ldo: 1000, tiles_n: 8, wg_x: 64, group_m: group });
    // x 100 MB: a group's 256 rows are 25.6 MB > L2_REUSE_BYTES, re-read once per column block (7 more);
    // w 1 MB: read once per group of 2 row blocks (4 groups, 3 more)
    r.kernel('gemm-sgmat.wgsl', 'main', sg, u(2), [100e6, 1e6, 4e6]);
    r.mark('sample', 2);
    // x 10 MB: the group's slab (2.56 MB) stays in L2; groups of 8 row blocks: w once
    r.kernel('gemm-sgmat.wgsl', 'main', sg, u(8), [10e6, 1e6, 4e6]);
    r.kernel('norm.wgsl', 'main', { OP: 'layer_norm' }, [3, 4], [40, 40]);
    r.copied(100);
    const rep = r.report();
    expect(rep.steps.map((s) => [s.bound_bytes, s.reread_bytes])).toEqual([[105e6, 7 * 100e6 + 3 * 1e6], [15e6 + 80 + 200, 0]]);
    expect(rep.traffic).toEqual({ step: 2, bound_bytes: 15e6 + 280, reread_bytes: 0, total_bytes: 15e6 + 280 });
    expect(L2_REUSE_BYTES).toBe(16 * 2 ** 20);
  });

  test('profiles: an unknown STEP1X_DRYRUN is a usage error naming the choices', () => {
    expect(dryRunProfile({ STEP1X_DRYRUN: 'h100' })?.memoryBytes).toBe(80e9);
    expect(() => dryRunProfile({ STEP1X_DRYRUN: 'a100' })).toThrow(`STEP1X_DRYRUN "a100" is not one of ${PROFILE_IDS.join(', ')}`);
  });
});

function runCli(profile: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'bin/step1x.js'), ...args], { encoding: 'utf8', env: { ...process.env, STEP1X_DRYRUN: profile, ...env }, timeout: 600_000 });
  if (r.status !== 0) throw new Error(`step1x ${args.join(' ')}: exit ${r.status}: ${r.stderr.slice(-2000)}`);
  return r;
}

/** `step1x edit --json` of `image` with `model` on a dry-run device → its report, and the progress text. */
function dryEdit(profile: string, model: string, image: string, args: string[], env: Record<string, string> = {}): DryRunReport & { model_loads: Record<string, number>; stderr: string } {
  const r = runCli(profile, ['edit', image, 'make it blue', '-o', join(image, '..', 'out.png'), '--model', model, '--json', ...args], env);
  return { ...JSON.parse(r.stdout.split('\n').find((l) => l.startsWith('{'))!).dryrun, stderr: r.stderr };
}

/** The issue's acceptance counts: no buffer created and ≤ 5 % new bind groups in the steps after the first, peak ≤ plan ≤ limit. */
function expectSteadyState(what: string, d: DryRunReport, limit: number): void {
  const later = d.steps.slice(1);
  process.stderr.write(`  ${what}: peak ${d.peak_bytes}, plan ${d.plan_peak_bytes}, limit ${limit}, steps 2..: ${later.map((s) => `${s.buffers_created} buffers / ${s.bind_groups_created} bind groups of ${s.dispatches}`).join('; ')}\n`);
  expect(later.length).toBeGreaterThan(0);
  for (const s of later) {
    expect(s.buffers_created).toBe(0);
    expect(s.bind_groups_created).toBeLessThanOrEqual(0.05 * s.dispatches);
  }
  expect(d.submits_in_flight).toBeGreaterThanOrEqual(2);
  expect(d.plan_peak_bytes).not.toBeNull();
  expect(d.peak_bytes).toBeLessThanOrEqual(d.plan_peak_bytes!);
  expect(d.plan_peak_bytes!).toBeLessThanOrEqual(limit);
}

/** `step1x plan --json` under a budget and the run with the same options stream the same (DiT blocks, Qwen towers), with the same plan peak. */
function expectPlanIsRun(what: string, plan: { peak_bytes: number; stages: { stage: string; streams: string[] }[] }, d: DryRunReport & { stderr: string }): void {
  const streams = (stage: string) => plan.stages.find((s) => s.stage === stage)!.streams;
  const ditRun = /DiT: streaming (\d+) blocks from disk/.exec(d.stderr)?.[1];
  const qwenRun = /Qwen2\.5-VL: streaming (text)?(?: and )?(vision)? layers from disk/.exec(d.stderr);
  process.stderr.write(`  ${what}: plan dit ${JSON.stringify(streams('sample'))} qwen ${JSON.stringify(streams('embed'))} peak ${plan.peak_bytes}; run dit ${ditRun ?? 0} qwen ${qwenRun ? qwenRun.slice(1).filter(Boolean).join('+') : '-'} plan peak ${d.plan_peak_bytes} peak ${d.peak_bytes}\n`);
  expect(ditRun ? [`${ditRun} blocks`] : []).toEqual(streams('sample'));
  expect(qwenRun ? qwenRun.slice(1).filter(Boolean) : []).toEqual(streams('embed'));
  expect(d.plan_peak_bytes).toBe(plan.peak_bytes);
  expect(d.peak_bytes).toBeLessThanOrEqual(plan.peak_bytes);
}

describe('step1x edit on a dry-run device at real size (header-only v1.1 fakes)', () => {
  let dir = '', model = '', image = '';
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'step1x-dryrun-'));
    model = await writeDryRunModel(join(dir, 'model'));
    image = writeSquarePng(join(dir, 'in.png'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const run = runCli;
  const dry = (profile: string, args: string[]) => dryEdit(profile, model, image, args);

  test('h100, 512², bf16, 3 steps: every stage and step counted, matrix-unit kernels, peak within the plan', () => {
    const d = dry('h100', ['--size', '512', '--steps', '3', '--quiet']);
    process.stderr.write(`  h100 512 bf16: peak ${d.peak_bytes}, plan ${d.plan_peak_bytes}, step 2 ${JSON.stringify(d.steps[1])}\n`);
    expect(d.profile).toBe('h100');
    expect(d.stages.map((s) => s.stage)).toEqual(['embed', 'encode', 'sample', 'decode']);
    expect(d.steps.map((s) => s.step)).toEqual([1, 2, 3]);
    const sample = d.stages.find((s) => s.stage === 'sample')!;
    // the DiT step is the same op sequence every time after the first, which also prepares the per-edit text
    // conditioning (connector constants, vector_in(y)); the sample stage is its steps (+ loading)
    expect(new Set(d.steps.slice(1).map((s) => s.dispatches)).size).toBe(1);
    expect(d.steps[1].dispatches).toBeGreaterThan(1000);
    expect(d.steps[0].dispatches).toBeGreaterThan(d.steps[1].dispatches);
    expect(d.steps[0].dispatches - d.steps[1].dispatches).toBeLessThan(50);
    expect(sample.dispatches).toBeGreaterThanOrEqual(d.steps[0].dispatches + 2 * d.steps[1].dispatches);
    for (const s of d.steps) expect(s.syncs).toBe(1); // the sampler's one readback per step
    // every DiT GEMM over tokens (M > 4; M <= 4 is left to gemv) runs on the matrix units
    const big = d.kernels.filter((k) => k.shape.startsWith('dit.gemm') && Number(/M=(\d+)/.exec(k.shape)![1]) > 4);
    expect(big.length).toBeGreaterThan(5);
    for (const k of big) expect([k.variant.startsWith('gemm-sgmat.wgsl'), k.matrix_units, k.tile]).toEqual([true, true, expect.stringContaining('SM=16')]);
    // those reading f16 activations load A straight from storage (gemm-sgmat ADIRECT; every DiT K is a multiple of 16)
    const f16x = big.filter((k) => /\bX16\b/.test(k.variant));
    expect(f16x.length).toBeGreaterThan(5);
    for (const k of f16x) expect([k.shape, k.variant]).toEqual([k.shape, expect.stringMatching(/\bADIRECT\b/)]);
    // every VAE conv (encode and decode, 1x1 and 3x3, stride 2, fused upsample) is an implicit GEMM on the matrix units
    const convs = d.kernels.filter((k) => k.shape.startsWith('vae.conv'));
    expect(convs.length).toBeGreaterThan(10);
    for (const k of convs) expect([k.shape, k.variant.startsWith('gemm-sgmat.wgsl:main'), k.variant.includes('CONV'), k.matrix_units]).toEqual([k.shape, true, true, true]);
    expect(d.peak_bytes).toBeGreaterThan(24e9); // the DiT's bf16 weights alone are 24.9 GB
    expectSteadyState('h100 512 bf16', d, 80e9);
  });

  test('h100, 1024², bf16: global-memory traffic per DiT step at most half of before issue 19 (TRAFFIC_BEFORE_GB)', () => {
    const d = dry('h100', ['--size', '1024', '--steps', '2', '--quiet']);
    const before = TRAFFIC_BEFORE_GB['h100 1024 bf16'] * 1e9;
    process.stderr.write(`  h100 1024 bf16 traffic: ${JSON.stringify(d.traffic)}, before ${before}\n`);
    expect(d.traffic).toEqual({ step: 2, bound_bytes: d.steps[1].bound_bytes, reread_bytes: d.steps[1].reread_bytes, total_bytes: d.steps[1].bound_bytes + d.steps[1].reread_bytes });
    expect(d.traffic!.bound_bytes).toBeGreaterThan(100e9); // the step's activations and its 24.9 GB of weights, at least
    expect(d.traffic!.total_bytes).toBeLessThanOrEqual(0.5 * before);
    expect(d.stderr).toMatch(/traffic per DiT step \(step 2\): [\d.]+ GB bound \+ [\d.]+ GB GEMM re-reads = [\d.]+ GB/);
  });

  test('rtx4090 q8 24GB and m2max q4 16GB: the same steady state, peak within the budget', () => {
    expectSteadyState('rtx4090 512 q8 24GB', dry('rtx4090', ['--size', '512', '--steps', '2', '--weights', 'q8', '--vram-budget', '24GB', '--quiet']), 24e9);
    expectSteadyState('m2max 512 q4 16GB', dry('m2max', ['--size', '512', '--steps', '2', '--weights', 'q4', '--vram-budget', '16GB', '--quiet']), 16e9);
  });

  test('`step1x plan` prints the streaming the run performs (DiT blocks, Qwen towers) and the peak it stays under', () => {
    for (const [profile, w, budget] of [['rtx4090', 'q8', '12GB'], ['m2max', 'q4', '4.5GB']]) {
      const plan = JSON.parse(run(profile, ['plan', '--model', model, '--size', '512', '--weights', w, '--vram-budget', budget, '--json']).stdout);
      expectPlanIsRun(`${profile} ${w} ${budget}`, plan, dry(profile, ['--size', '512', '--steps', '2', '--weights', w, '--vram-budget', budget]));
    }
  });

  test('lavapipe profile picks the register-tiled kernels (no matrix units on a CPU adapter under auto)', () => {
    const d = dry('lavapipe', ['--size', '256', '--steps', '1', '--weights', 'q4', '--quiet']);
    const gemms = d.kernels.filter((k) => k.shape.startsWith('dit.gemm'));
    expect(gemms.length).toBeGreaterThan(0);
    expect(gemms.every((k) => !k.matrix_units)).toBe(true);
    const convs = d.kernels.filter((k) => k.shape.startsWith('vae.conv'));
    expect(convs.length).toBeGreaterThan(10);
    expect(convs.every((k) => k.variant.startsWith('conv2d.wgsl:main') && !k.matrix_units)).toBe(true);
  });
});

describe('step1x edit v1.2 on a dry-run device at real size (header-only real_shapes_v12 fake, diffusers layout)', () => {
  let dir = '', model = '', image = '';
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'step1x-dryrun-v12-'));
    model = await writeFakeV12Model(join(dir, 'Step1X-Edit-v1p2'), { tokenizer: true });
    image = writeSquarePng(join(dir, 'in.png'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const dry = (profile: string, args: string[]) => dryEdit(profile, model, image, args);

  test('h100, 1024² (the v1.2 default size), bf16, 3 steps: the four stages, two DiT forwards a step, no buffer created in steps 2..N, peak within the plan', () => {
    const d = dry('h100', ['--steps', '3', '--quiet']);
    expect(d.stages.map((s) => s.stage)).toEqual(['embed', 'encode', 'sample', 'decode']);
    expect(d.steps.map((s) => s.step)).toEqual([1, 2, 3]);
    expect(new Set(d.steps.slice(1).map((s) => s.dispatches)).size).toBe(1);
    for (const s of d.steps) expect(s.syncs).toBe(2); // one readback per side (prompt, "") a step
    // the prompt's and ""'s rows run one by one over all 2 · 4096 image tokens (noise + reference)
    expect(d.kernels.some((k) => k.shape.startsWith('dit.gemm M=8192 '))).toBe(true);
    expect(d.peak_bytes).toBeGreaterThan(24e9); // the DiT's bf16 weights alone are 24.9 GB
    expectSteadyState('v1.2 h100 1024 bf16', d, 80e9);
  });

  test('rtx4090 q8 24GB and m2max q4 16GB: the same steady state, peak within the budget', () => {
    expectSteadyState('v1.2 rtx4090 1024 q8 24GB', dry('rtx4090', ['--steps', '2', '--weights', 'q8', '--vram-budget', '24GB', '--quiet']), 24e9);
    expectSteadyState('v1.2 m2max 1024 q4 16GB', dry('m2max', ['--steps', '2', '--weights', 'q4', '--vram-budget', '16GB', '--quiet']), 16e9);
  });

  test('`step1x plan` prints the residency and streaming the v1.2 run performs, also under budgets that stream the DiT', () => {
    for (const [profile, w, budget, streamsDit] of [['rtx4090', 'q8', '24GB', false], ['rtx4090', 'q8', '12GB', true], ['m2max', 'q4', '10GB', true]] as const) {
      const plan = JSON.parse(runCli(profile, ['plan', '--model', model, '--weights', w, '--vram-budget', budget, '--json']).stdout);
      expect([plan.version, plan.width, plan.height]).toEqual(['v1.2', 1024, 1024]);
      expect(plan.stages.find((s: { stage: string }) => s.stage === 'sample').streams.length > 0).toBe(streamsDit);
      expectPlanIsRun(`v1.2 ${profile} ${w} ${budget}`, plan, dry(profile, ['--steps', '2', '--weights', w, '--vram-budget', budget]));
    }
  });

  // the thinker shortened to 2 new tokens a call (its KV cache and prefill are planned for the official 128);
  // a 1024² photo, so the rewrite sees the most image tokens a thinker image can have (1024)
  const thinking = (profile: string, args: string[]) =>
    dryEdit(profile, model, writeSquarePng(join(dir, 'in1024.png'), 1024), ['--steps', '2', '--think', ...args], { STEP1X_THINKER_MAX_TOKENS: '2', STEP1X_THINKER_RETRIES: '1' });
  const stagePeak = (d: { stages: { stage: string; peak_bytes: number }[] }, stage: string) => d.stages.find((s) => s.stage === stage)!.peak_bytes;

  test('--think, rtx4090 q8 12GB: the thinker runs on the edit\'s one Qwen (loaded once, with --weights) inside the printed plan, per stage', () => {
    const plan = JSON.parse(runCli('rtx4090', ['plan', '--model', model, '--weights', 'q8', '--vram-budget', '12GB', '--think', '--json']).stdout);
    expect(plan.keep_resident).toBe(false);
    expect(plan.stages.map((s: { stage: string }) => s.stage)).toEqual(['reason', 'embed', 'encode', 'sample', 'decode']);
    const d = thinking('rtx4090', ['--weights', 'q8', '--vram-budget', '12GB']);
    process.stderr.write(`  v1.2 rtx4090 q8 12GB --think: loads ${JSON.stringify(d.model_loads)}, reason stage peak ${stagePeak(d, 'reason')} (plan ${stagePeak(plan, 'reason')} + reserve ${plan.cache_bytes})\n`);
    expect(d.stages.map((s) => s.stage)).toEqual(['reason', 'embed', 'encode', 'sample', 'decode']);
    // the thinker's stage alone within its planned peak (Qwen q8 + bf16 lm_head + KV cache + prefill)
    expect(stagePeak(d, 'reason')).toBeLessThanOrEqual(stagePeak(plan, 'reason') + plan.cache_bytes);
    // one Qwen: loaded for the rewrite, held into the embed stage, freed before the VAE loads
    expect(d.model_loads).toEqual({ qwen: 1, vae: 2, dit: 1 });
    expect(d.stages.find((s) => s.stage === 'embed')!.bytes_allocated).toBeLessThan(1e9); // activations only: no weights loaded
    expectSteadyState('v1.2 rtx4090 1024 q8 12GB --think', d, 12e9);
    expectPlanIsRun('v1.2 rtx4090 q8 12GB --think', plan, d);
  });

  test('--think, h100, no budget: every model kept, Qwen loaded once for the thinker and the embed stage, peak within the plan', () => {
    const plan = JSON.parse(runCli('h100', ['plan', '--model', model, '--think', '--json']).stdout);
    expect(plan.keep_resident).toBe(true);
    const d = thinking('h100', []);
    expect(d.model_loads).toEqual({ qwen: 1, vae: 1, dit: 1 });
    expectSteadyState('v1.2 h100 1024 bf16 --think', d, 80e9);
    expectPlanIsRun('v1.2 h100 bf16 --think', plan, d);
  });
});

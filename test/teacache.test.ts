/**
 * TeaCache (src/pipeline/teacache.ts + the block-skip hook in src/models/dit.ts):
 *  - the decision rule on its own, driven to reproduce the golden's rel_l1 sequence, must give the
 *    golden's exact skip pattern and accumulator;
 *  - the whole `teacache_tiny` golden (current official code: v1.1, CFG truncation 0.93) passes with
 *    nothing skipped, `teacache.calc` bit-exact;
 *  - threshold 0 never skips and is bit-identical to a run without the cache (the hook changes nothing
 *    on steps that run); a huge threshold skips every middle step;
 *  - `--cache` parsing.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { parseCacheOption, poly1d, relL1, TEACACHE_COEFFICIENTS, TEACACHE_DEFAULT_THRESHOLD, TeaCache } from '../src/pipeline/teacache.js';
import { runGolden } from '../src/golden/runner.js';
import '../src/golden/kinds/index.js';

afterAll(releaseGpu);

const CASE = goldenCase('teacache_tiny');
const caseJson = JSON.parse(readFileSync(join(CASE, 'case.json'), 'utf8'));

test('poly1d is numpy poly1d (highest power first); relL1 = mean|a-b| / mean|b|', () => {
  expect(poly1d([2, -3, 5], 0.5)).toBeCloseTo(2 * 0.25 - 1.5 + 5, 12);
  expect(poly1d(TEACACHE_COEFFICIENTS, 0)).toBe(0.264230861);
  // the case's pass-1 values are poly(rel) of its recorded rel_l1
  expect(caseJson.teacache.coefficients).toEqual([...TEACACHE_COEFFICIENTS]);
  expect(relL1(Float32Array.of(1, -2, 3, 0), Float32Array.of(1, -1, 1, -2))).toBeCloseTo(5 / 5, 6);
  expect(relL1(Float32Array.of(2, 2), Float32Array.of(1, 1))).toBe(1);
});

test('the decision rule reproduces the golden skip pattern and accumulator from its rel_l1 sequence', async () => {
  const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
  const rel = await io.readF32('teacache.rel_l1');
  const calcRef = Array.from(await io.readBytes('teacache.calc'));
  const accRef = await io.readF32('teacache.accumulated');
  await io.close();
  const S = rel.length;
  const tc = new TeaCache(S, caseJson.spec.teacache.rel_l1_thresh);
  // positive tracked inputs scaled by (1 + rel_k) give exactly that relative L1 distance
  let x = new Float32Array(64).fill(1);
  for (let k = 0; k < S; k++) {
    if (k > 0) x = x.map((v) => v * (1 + rel[k]));
    tc.decide(x);
  }
  const got = tc.decisions;
  expect(got.map((d) => (d.calc ? 1 : 0))).toEqual(calcRef);
  for (let k = 0; k < S; k++) {
    if (Math.abs(got[k].rel - rel[k]) > 1e-5) throw new Error(`rel step ${k}: ${got[k].rel} vs ${rel[k]}`);
    if (Math.abs(got[k].accumulated - accRef[k]) > 1e-4) throw new Error(`accumulated step ${k}: ${got[k].accumulated} vs ${accRef[k]}`);
  }
  expect(tc.skipped).toBe(caseJson.teacache.skips);
  // steps 0 and S-1 always run, whatever the threshold
  const greedy = new TeaCache(S, 1e9);
  for (let k = 0; k < S; k++) greedy.decide(Float32Array.of(1 + k, 2 + k));
  expect(greedy.decisions.map((d) => d.calc)).toEqual([true, ...new Array(S - 2).fill(false), true]);
});

test('golden teacache_tiny passes with nothing skipped (calc exact)', async () => {
  const { report, details } = await runGolden(CASE, { log: () => undefined });
  const bad = details.filter((d) => !d.pass || d.skipped);
  if (bad.length) throw new Error(bad.map((d) => `${d.name}: pass ${d.pass} skipped ${d.skipped} maxAbs ${d.maxAbs}`).join('\n'));
  expect(report.pass).toBe(true);
  expect(details.find((d) => d.name === 'teacache.calc')?.maxAbs).toBe(0);
  expect(details.length).toBeGreaterThanOrEqual(40);
});

test('threshold 0 never skips and equals the uncached run bit for bit; a huge threshold skips the middle steps', async () => {
  const g = await getGpu();
  const { Step1XEdit } = await import('../src/models/dit.js');
  const { prepare, imageSeqLen } = await import('../src/pipeline/prepare.js');
  const { denoise, getSchedule } = await import('../src/pipeline/sampling.js');
  const spec = caseJson.spec;
  const model = await Step1XEdit.open(g, join(CASE, 'dit.safetensors'), { dit: spec.dit, connector: spec.connector });
  const io = await SafetensorsFile.open(join(CASE, 'io.safetensors'));
  try {
    const ls = [...io.tensors.get('in.noise')!.shape];
    const [B, T] = io.tensors.get('in.llm_embedding')!.shape;
    const p = prepare(await io.readF32('in.noise'), await io.readF32('in.latent_ref'), ls, B, T, 'v1.1');
    const L = 2 * p.h * p.w;
    const ts = getSchedule(6, imageSeqLen(ls[2], ls[3]));
    const run = async (cache?: TeaCache) => {
      const pred = model.predictor({ llmEmbedding: await io.readF32('in.llm_embedding'), mask: await io.readF32('in.mask'), imgIds: p.imgIds, txtIds: p.txtIds, T, L, cache });
      try {
        return await denoise(pred, p.img, B, { timesteps: ts, cfgGuidance: 5, timestepsTruncate: 0.93, channels: p.channels });
      } finally {
        pred.dispose();
      }
    };
    const plain = await run();
    const zero = new TeaCache(6, 0);
    const cached0 = await run(zero);
    expect(zero.skipped).toBe(0);
    expect(Buffer.from(cached0.buffer).equals(Buffer.from(plain.buffer))).toBe(true);
    const all = new TeaCache(6, 1e9);
    const cachedAll = await run(all);
    expect(all.decisions.map((d) => d.calc)).toEqual([true, false, false, false, false, true]);
    let diff = 0;
    for (let i = 0; i < plain.length; i++) diff = Math.max(diff, Math.abs(cachedAll[i] - plain[i]));
    expect(diff).toBeGreaterThan(0); // skipping changes the result (the residual path is really taken)
    expect(Number.isFinite(diff)).toBe(true);
  } finally {
    await io.close();
    await model.close();
  }
});

test('--cache parsing', () => {
  expect(parseCacheOption(undefined)).toBeUndefined();
  expect(parseCacheOption('none')).toBeUndefined();
  expect(parseCacheOption('teacache')).toEqual({ kind: 'teacache', threshold: TEACACHE_DEFAULT_THRESHOLD });
  expect(parseCacheOption('teacache:0.4')).toEqual({ kind: 'teacache', threshold: 0.4 });
  for (const bad of ['teacache:', 'teacache:x', 'teacache:-1', 'fastcache', 'teacache:0.2:1'])
    expect(() => parseCacheOption(bad)).toThrow(/--cache/);
});

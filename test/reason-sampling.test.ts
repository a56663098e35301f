/**
 * v12_sampling_tiny golden: the thinker's logits-processor chain (repetition penalty 1.05 → temperature 0.7 →
 * top-k 50 → top-p 0.9) and the greedy chain on fixed logits rows: kept sets exact, scores and probabilities at
 * the case's tolerances. Plus the seeded drawer: reproducible and only ever drawing kept tokens.
 * Row 3 ("ties") puts top-p's cut inside a group of exactly equal scores: which members are dropped is the
 * order torch's CPU sort leaves equal values in (libstdc++ std::sort, std-sort.ts), exact here too.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { compareTensor, findTolerance, formatDetail } from '../src/golden/compare.js';
import { run } from '../src/golden/kinds/v12_sampling.js';
import { processScores, THINKER_SAMPLING, TokenSampler } from '../src/pipeline/reason/sampling.js';
import { stdSort } from '../src/pipeline/reason/std-sort.js';

test('v12_sampling_tiny: every row of both chains within tolerance', async () => {
  const dir = goldenCase('v12_sampling_tiny');
  const caseJson = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const emitted = new Map<string, Float32Array | Int32Array>();
  try {
    await run({
      caseDir: dir, spec: caseJson.spec, caseJson, io, gpu: undefined as any,
      input: (n) => io.readF32(n), inputInt: (n) => io.readI32(n), has: (n) => io.has(n),
      emit: (n, d) => void emitted.set(n, d as Float32Array),
      log: (m) => process.stderr.write(`  ${m}\n`),
    });
    const bad: string[] = [];
    let compared = 0;
    for (const n of io.tensors.keys()) {
      if (n.startsWith('in.')) continue;
      const got = emitted.get(n);
      if (!got) {
        bad.push(`${n}: not emitted`);
        continue;
      }
      const d = compareTensor(n, got, await io.readF32(n), findTolerance(caseJson.tolerance, n));
      compared++;
      if (!d.pass) bad.push(formatDetail(d));
    }
    if (bad.length) throw new Error(bad.join('\n'));
    expect(compared).toBe(36);
  } finally {
    await io.close();
  }
});

test('std::sort emulation: sorted, and equal keys in libstdc++ order (row 3 of the case: 63 first)', () => {
  for (const n of [0, 1, 2, 15, 16, 17, 96, 1000]) {
    const keys = Array.from({ length: n }, (_, i) => (i * 7919) % 13);
    const o = stdSort(Array.from(keys.keys()), (a, b) => keys[a] < keys[b]);
    expect(o.slice().sort((a, b) => a - b)).toEqual(Array.from(keys.keys()));
    for (let i = 1; i < n; i++) expect(keys[o[i - 1]]).toBeLessThanOrEqual(keys[o[i]]);
  }
  // all equal: introsort's partitions permute them (not stable)
  const eq = stdSort(Array.from({ length: 40 }, (_, i) => i), () => false);
  expect(eq).not.toEqual(Array.from({ length: 40 }, (_, i) => i));
});

test('the seeded drawer is reproducible and draws only kept tokens', () => {
  const logits = Float32Array.from({ length: 200 }, (_, i) => Math.sin(i * 12.9898) * 4);
  const scores = processScores(logits, [3, 5, 3], THINKER_SAMPLING, false);
  const a = new TokenSampler(7), b = new TokenSampler(7);
  const seen = new Set<number>();
  for (let i = 0; i < 500; i++) {
    const t = a.draw(scores);
    expect(b.draw(scores)).toBe(t);
    expect(Number.isFinite(scores[t])).toBe(true);
    seen.add(t);
  }
  expect(seen.size).toBeGreaterThan(1);
});

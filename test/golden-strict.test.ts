/**
 * A golden case runs from `spec` + weight files + `in.*` alone. Every case under test/golden is copied
 * with its io.safetensors stripped to the `in.*` tensors (the other files linked, beside links to its
 * sibling cases, which some cases read) and run; every tensor of the original io.safetensors must then be
 * produced with its shape and within the case's tolerance. A kind that read an answer's value, shape or
 * name from io.safetensors would miss it here. Left out: tensors whose case.json description says
 * "NOT the reference" (what another implementation would give, e.g. v12_e2e_tiny's
 * `mid.alt_slow_processor.*`).
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { compareWithReference, runGolden } from '../src/golden/runner.js';
import { formatDetail } from '../src/golden/compare.js';
import { knownKinds, resolveKind } from '../src/golden/registry.js';
import { REPO_ROOT } from './util/golden-path.js';
import { testUnless } from './util/skip.js';
import '../src/golden/kinds/index.js';

afterAll(releaseGpu);
const LOCAL = join(REPO_ROOT, 'test/golden');
const cases = readdirSync(LOCAL).filter((n) => existsSync(join(LOCAL, n, 'case.json')) && existsSync(join(LOCAL, n, 'io.safetensors')));
let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'step1x-strict-'));
  for (const n of readdirSync(LOCAL)) if (statSync(join(LOCAL, n)).isDirectory()) symlinkSync(join(LOCAL, n), join(root, n));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Names whose description in case.json says they are not the reference. */
function notReference(caseJson: any): Set<string> {
  const out = new Set<string>();
  for (const [n, d] of Object.entries((caseJson.tensors ?? {}) as Record<string, any>)) if (/NOT the reference/.test(String(d?.description ?? ''))) out.add(n);
  return out;
}

/** A copy of the case under root/<name>.stripped: every entry linked except io.safetensors, which keeps only in.*. */
async function strippedCopy(name: string): Promise<string> {
  const src = join(LOCAL, name), dst = join(root, `${name}.stripped`);
  mkdirSync(dst);
  for (const e of readdirSync(src)) if (e !== 'io.safetensors') symlinkSync(join(src, e), join(dst, e));
  const io = await SafetensorsFile.open(join(src, 'io.safetensors'));
  try {
    const keep: Record<string, WriteTensor> = {};
    for (const [n, info] of io.tensors) if (n.startsWith('in.')) keep[n] = { dtype: info.dtype, shape: [...info.shape], data: await io.readBytes(n) };
    await writeSafetensors(join(dst, 'io.safetensors'), keep);
  } finally {
    await io.close();
  }
  return dst;
}

for (const name of cases) {
  const caseJson = JSON.parse(readFileSync(join(LOCAL, name, 'case.json'), 'utf8'));
  const known = knownKinds().includes(caseJson.kind);
  testUnless(known ? undefined : `kind "${caseJson.kind}" has no runner in this build`, `${name}: from in.* alone, every tensor of the case is produced`, async () => {
    expect(await resolveKind(caseJson.kind)).toBeDefined();
    const g = await getGpu();
    const copy = await strippedCopy(name);
    const res = await runGolden(copy, { gpu: g, log: () => undefined });
    const skip = notReference(caseJson);
    const io = await SafetensorsFile.open(join(LOCAL, name, 'io.safetensors'));
    const bad: string[] = [];
    let compared = 0;
    try {
      for (const [n, info] of io.tensors) {
        if (n.startsWith('in.') || skip.has(n)) continue;
        const e = res.emitted.get(n);
        if (!e) {
          bad.push(`${n}: not produced`);
          continue;
        }
        if (e.shape.join(',') !== info.shape.join(',')) {
          bad.push(`${n}: shape [${e.shape}], the case has [${info.shape}]`);
          continue;
        }
        const d = await compareWithReference(io, n, e.data, caseJson.tolerance ?? [], undefined, (m) => res.emitted.get(m)?.data);
        compared++;
        if (!d.pass) bad.push(formatDetail(d));
      }
    } finally {
      await io.close();
    }
    if (bad.length) process.stderr.write(`${name}: ${bad.length} of ${compared + bad.length} tensors fail from in.* alone:\n  ${bad.join('\n  ')}\n`);
    expect(bad).toEqual([]);
    expect(compared).toBeGreaterThan(0);
  });
}

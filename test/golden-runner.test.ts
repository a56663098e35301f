/**
 * The golden runner and `step1x golden`: tolerance globs and forms, exit codes (0 / 1 / 2), the --json
 * report shape, --dump, and a case whose io.safetensors holds only in.* tensors (the vae kind on the
 * vae_tiny inputs). Cases are built in a temp dir around a GPU-free stub kind registered here.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram, reportError } from '../src/cli/main.js';
import { compareTensor, explainRankSwaps, findTolerance, globToRegExp, type Tolerance } from '../src/golden/compare.js';
import { registerKind } from '../src/golden/registry.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { goldenCase } from './util/golden-path.js';

const TOL: Tolerance[] = [
  { match: 'in.*', atol: 0, rtol: 0 },
  { match: 'out.img', u8_max_diff: 1, u8_max_fraction: 0.3 },
  { match: 'mid.ids', exact: true },
  { match: 'mid.*', atol: 1e-3, rtol: 0 },
  { match: '*', atol: 1e-5, rtol: 1e-3 },
];

describe('tolerance globs and forms', () => {
  test('glob: * matches anything incl. dots, everything else literal, first match wins', () => {
    expect(globToRegExp('mid.*').test('mid.enc.down1.blocks')).toBe(true);
    expect(globToRegExp('mid.*').test('midXenc')).toBe(false);
    expect(globToRegExp('*').test('')).toBe(true);
    expect(globToRegExp('out.rgb_u8').test('out.rgb_u8x')).toBe(false);
    expect(globToRegExp('a*b*c').test('a.x.b.y.c')).toBe(true);
    expect(globToRegExp('x+(y)').test('x+(y)')).toBe(true);
    expect(findTolerance(TOL, 'mid.ids')?.exact).toBe(true);
    expect(findTolerance(TOL, 'mid.idsx')?.atol).toBe(1e-3);
    expect(findTolerance(TOL, 'out.latent')?.match).toBe('*');
    expect(findTolerance([{ match: 'a.*', atol: 1 }], 'b')).toBeUndefined();
  });

  test('atol/rtol, exact, u8 forms; relL2 null for an all-zero reference; NaN fails', () => {
    const t = { match: '*', atol: 0.1, rtol: 0.1 };
    expect(compareTensor('x', [1.15, 2], [1, 2], t).pass).toBe(true); // 0.15 <= 0.1 + 0.1
    const f = compareTensor('x', [1.25, 2], [1, 2], t);
    expect(f.pass).toBe(false);
    expect(f.maxAbs).toBeCloseTo(0.25);
    expect(f.relL2).toBeCloseTo(0.25 / Math.sqrt(5));
    expect(compareTensor('z', [0.01, 0], [0, 0], t)).toMatchObject({ pass: true, relL2: null });
    expect(compareTensor('n', [NaN, 0], [0, 0], t)).toMatchObject({ pass: false, maxAbs: null });
    expect(compareTensor('e', [1, 2, 3], [1, 2, 3], { match: '*', exact: true }).pass).toBe(true);
    expect(compareTensor('e', [1, 2, 3.0000001], [1, 2, 3], { match: '*', exact: true }).pass).toBe(false);
    const u8 = { match: '*', u8_max_diff: 1, u8_max_fraction: 0.25 };
    expect(compareTensor('u', [1, 2, 3, 5], [1, 2, 3, 4], u8).pass).toBe(true);
    expect(compareTensor('u', [1, 2, 4, 5], [1, 2, 3, 4], u8).pass).toBe(false); // 2/4 differ
    expect(compareTensor('u', [1, 2, 3, 6], [1, 2, 3, 4], u8).pass).toBe(false); // diff 2
    expect(compareTensor('l', [1], [1, 2], t).pass).toBe(false);
    expect(compareTensor('none', [1], [1], undefined).pass).toBe(false);
  });

  test('ranked ids: reorderings pass only among reference scores within their tolerance', () => {
    const exact = { match: '*', exact: true }, tol = { match: '*', atol: 1e-4, rtol: 0 };
    const ref = [7, 8, 9, 4, 5, 6], scores = [3, 2.99995, 1, 9, 8, 7]; // two rows of k = 3
    const check = (got: number[]) => explainRankSwaps(compareTensor('t_ids', got, ref, exact), got, ref, scores, 3, tol);
    expect(check([8, 7, 9, 4, 5, 6])).toMatchObject({ pass: true }); // 3 vs 2.99995: within 1e-4
    expect(check([8, 7, 9, 4, 5, 6]).note).toMatch(/2 rank\(s\) reordered/);
    expect(check([7, 9, 8, 4, 5, 6]).pass).toBe(false); // 2.99995 vs 1: a real difference
    expect(check([9, 8, 7, 4, 5, 6]).pass).toBe(false); // 3 vs 1: too far apart
    expect(check([8, 8, 9, 4, 5, 6]).pass).toBe(false); // a repeated id
    expect(check([7, 8, 4, 9, 5, 6]).pass).toBe(false); // across rows
    expect(check([7, 8, 9, 4, 5, 1]).pass).toBe(false); // another id
    expect(explainRankSwaps(compareTensor('t_ids', [8, 7, 9, 4, 5, 6], ref, exact), [8, 7, 9, 4, 5, 6], ref, scores, 3, exact).pass).toBe(false);
    // reduced-precision contract (rel_l2 1e-2): scores within 1 % of each other may swap, others not
    const red = { match: '*', rel_l2: 1e-2 }, sc2 = [3, 2.98, 1, 9, 8, 7];
    expect(explainRankSwaps(compareTensor('t_ids', [8, 7, 9, 4, 5, 6], ref, exact), [8, 7, 9, 4, 5, 6], ref, sc2, 3, red).pass).toBe(true);
    expect(explainRankSwaps(compareTensor('t_ids', [7, 8, 9, 5, 4, 6], ref, exact), [7, 8, 9, 5, 4, 6], ref, sc2, 3, red).pass).toBe(false); // 9 vs 8
    const sc3 = [5, 4.99, 4.98, 9, 8, 7]; // three scores within 1 %: a rotation of the three passes
    expect(explainRankSwaps(compareTensor('t_ids', [8, 9, 7, 4, 5, 6], ref, exact), [8, 9, 7, 4, 5, 6], ref, sc3, 3, red).pass).toBe(true);
    // the border: another id at the last rank passes only where our score there ties the reference's
    const border = [7, 8, 1, 4, 5, 6], ours = [3, 2.98, 0.995, 9, 8, 7];
    expect(explainRankSwaps(compareTensor('t_ids', border, ref, exact), border, ref, sc2, 3, red, ours).pass).toBe(true);
    expect(explainRankSwaps(compareTensor('t_ids', border, ref, exact), border, ref, sc2, 3, red, [3, 2.98, 0.9, 9, 8, 7]).pass).toBe(false);
    expect(explainRankSwaps(compareTensor('t_ids', border, ref, exact), border, ref, sc2, 3, red).pass).toBe(false); // no scores of ours
    const mid = [7, 1, 9, 4, 5, 6]; // another id before the last rank
    expect(explainRankSwaps(compareTensor('t_ids', mid, ref, exact), mid, ref, sc2, 3, red, [3, 2.98, 1, 9, 8, 7]).pass).toBe(false);
  });
});

// ---- CLI -----------------------------------------------------------------------------------------

/** A GPU-free kind: out.a = 2·in.x, mid.ids = [0..n) (i64), out.img = u8 of in.x·10, mid.extra (no reference). */
registerKind('test_stub', async (ctx) => {
  const x = await ctx.input('in.x');
  ctx.emit('in.x', x, [x.length]);
  ctx.emit('out.a', x.map((v) => 2 * v), [x.length]);
  ctx.emit('mid.ids', Int32Array.from(x, (_, i) => i), [x.length]);
  ctx.emit('out.img', Uint8Array.from(x, (v) => Math.round(v * 10)), [x.length]);
  ctx.emit('mid.extra', new Float32Array([1, 2]), [2]);
});

const root = mkdtempSync(join(tmpdir(), 'step1x-golden-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const X = new Float32Array([0.5, 1, 2, 3.5]);

async function makeCase(name: string, kind: string, tensors: Record<string, WriteTensor> | null): Promise<string> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'case.json'), JSON.stringify({ case: name, kind, spec: {}, tolerance: TOL }));
  if (tensors) await writeSafetensors(join(dir, 'io.safetensors'), tensors);
  return dir;
}

const f32 = (a: number[] | Float32Array): WriteTensor => ({ dtype: 'F32', shape: [a.length], data: Float32Array.from(a) });
const full = (over: Record<string, WriteTensor> = {}): Record<string, WriteTensor> => ({
  'in.x': f32(X),
  'out.a': f32(X.map((v) => 2 * v)),
  'mid.ids': { dtype: 'I64', shape: [4], data: BigInt64Array.from([0n, 1n, 2n, 3n]) },
  'out.img': { dtype: 'U8', shape: [4], data: Uint8Array.from([5, 10, 20, 34]) }, // one value off by 1
  'mid.not_computed': f32([1]),
  ...over,
});

/** Run `step1x golden ...args`; returns the exit code and what went to stdout. */
async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const ow = process.stdout.write, ew = process.stderr.write;
  let out = '', err = '';
  (process.stdout as any).write = (s: string) => ((out += s), true);
  (process.stderr as any).write = (s: string) => ((err += s), true);
  let code = 0;
  try {
    await buildProgram().parseAsync(['node', 'step1x', 'golden', ...args]);
  } catch (e) {
    code = reportError(e);
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
  return { code, out, err };
}

describe('step1x golden', () => {
  test('pass: exit 0, --json is exactly one object of the documented shape', async () => {
    const dir = await makeCase('ok', 'test_stub', full());
    const r = await cli(dir, '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(Object.keys(j).sort()).toEqual(['case', 'kind', 'pass', 'tensors']);
    expect(j).toMatchObject({ case: 'ok', kind: 'test_stub', pass: true });
    for (const t of j.tensors) expect(Object.keys(t).sort()).toEqual(['maxAbs', 'name', 'pass', 'relL2', 'skipped']);
    const by = Object.fromEntries(j.tensors.map((t: any) => [t.name, t]));
    expect(by['out.a']).toEqual({ name: 'out.a', maxAbs: 0, relL2: 0, pass: true, skipped: false });
    expect(by['out.img']).toMatchObject({ maxAbs: 1, pass: true, skipped: false });
    expect(by['mid.ids']).toMatchObject({ pass: true, skipped: false });
    expect(by['in.x']).toMatchObject({ pass: true, skipped: false }); // an emitted in.* with a reference is compared
    expect(by['mid.not_computed']).toEqual({ name: 'mid.not_computed', maxAbs: null, relL2: null, pass: true, skipped: true });
    expect(by['mid.extra']).toBeUndefined();
    // text mode
    const t = await cli(dir);
    expect(t.code).toBe(0);
    expect(t.out).toMatch(/SKIP mid\.not_computed/);
    expect(t.out).toMatch(/PASS ok \(kind test_stub\)/);
  });

  test('mismatch and missing out.*: exit 1', async () => {
    const bad = await makeCase('bad', 'test_stub', full({ 'out.a': f32([1, 2, 4, 7.1]) }));
    const r = await cli(bad, '--json');
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out);
    expect(j.pass).toBe(false);
    expect(j.tensors.find((t: any) => t.name === 'out.a')).toMatchObject({ pass: false, skipped: false });
    expect(r.err).toMatch(/out\.a/);
    const missing = await makeCase('missing_out', 'test_stub', full({ 'out.never': f32([1]) }));
    const m = await cli(missing, '--json');
    expect(m.code).toBe(1);
    expect(JSON.parse(m.out).tensors.find((t: any) => t.name === 'out.never')).toMatchObject({ pass: false, skipped: false, maxAbs: null });
    const u8 = await makeCase('u8_off', 'test_stub', full({ 'out.img': { dtype: 'U8', shape: [4], data: Uint8Array.from([5, 10, 22, 35]) } }));
    expect((await cli(u8)).code).toBe(1);
  });

  test('usage/input errors: exit 2 with a one-line message', async () => {
    for (const [dir, re] of [
      [join(root, 'nope'), /no such directory/],
      [await makeCase('unknown_kind', 'no_such_kind', full()), /unknown kind "no_such_kind".*vae/],
      [await makeCase('no_io', 'test_stub', null), /no io\.safetensors/],
      [await makeCase('missing_input', 'test_stub', { 'out.a': f32([1]) }), /no tensor "in\.x"/],
    ] as const) {
      const r = await cli(dir, '--json');
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      expect(r.err.trim().split('\n').filter((l) => l.startsWith('step1x: error')).length).toBe(1);
      expect(r.err).toMatch(re);
    }
    const noCaseJson = join(root, 'empty_dir');
    mkdirSync(noCaseJson, { recursive: true });
    expect((await cli(noCaseJson)).code).toBe(2);
  });

  test('--dump writes every computed tensor except in.*, with F32 / I64 / U8 dtypes', async () => {
    const dir = await makeCase('dump', 'test_stub', full());
    const file = join(root, 'dump.safetensors');
    expect((await cli(dir, '--dump', file)).code).toBe(0);
    const st = await SafetensorsFile.open(file);
    try {
      expect(st.keys().sort()).toEqual(['mid.extra', 'mid.ids', 'out.a', 'out.img']);
      expect(st.tensors.get('out.a')!.dtype).toBe('F32');
      expect(st.tensors.get('mid.ids')!.dtype).toBe('I64');
      expect(st.tensors.get('out.img')!.dtype).toBe('U8');
      expect([...(await st.readF32('out.a'))]).toEqual([1, 2, 4, 7]);
      expect([...(await st.readI64AsNumber('mid.ids'))]).toEqual([0, 1, 2, 3]);
      expect([...(await st.readBytes('out.img'))]).toEqual([5, 10, 20, 35]);
    } finally {
      await st.close();
    }
  });

  test('a case with only in.* tensors (vae kind on the vae_tiny inputs): nothing compared, all dumped', async () => {
    const src = goldenCase('vae_tiny');
    const ref = await SafetensorsFile.open(join(src, 'io.safetensors'));
    const ins: Record<string, WriteTensor> = {};
    for (const [n, info] of ref.tensors)
      if (n.startsWith('in.')) ins[n] = { dtype: info.dtype, shape: [...info.shape], data: await ref.readBytes(n) };
    const dir = await makeCase('vae_inputs_only', 'vae', ins);
    copyFileSync(join(src, 'vae.safetensors'), join(dir, 'vae.safetensors'));
    const dump = join(root, 'vae_dump.safetensors');
    const r = await cli(dir, '--json', '--dump', dump);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ case: 'vae_inputs_only', kind: 'vae', pass: true, tensors: [] });
    const st = await SafetensorsFile.open(dump);
    try {
      for (const n of ['out.moments', 'out.latent', 'out.latent_sampled', 'out.decoded', 'out.decoded_random', 'mid.enc.mid.attn_1', 'mid.dec.up2.blocks'])
        expect(st.has(n)).toBe(true);
      expect(st.keys().filter((k) => k.startsWith('in.'))).toEqual([]);
      // the dumped outputs are the golden's (within the case tolerance)
      for (const n of ['out.latent', 'out.decoded']) {
        const c = compareTensor(n, await st.readF32(n), await ref.readF32(n), { match: '*', atol: 1e-3, rtol: 1e-3 });
        expect(c.pass).toBe(true);
      }
    } finally {
      await st.close();
      await ref.close();
    }
  });
});

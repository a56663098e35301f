/**
 * Every kernel's uniform block described in TS (runtime/uniforms.ts, next to each op) against the WGSL
 * struct its shader binds at @binding(0), read through the project's preprocessor with the description's
 * defines (so #ifdef'd members, gemm-sgmat's CONV ones, count): same member names, order and scalar
 * types, padding included. Every shader with a uniform block has a description for each of its structs.
 * CPU only.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { preprocess, SHADER_DIR } from '../src/runtime/shader-source.js';
import { UNIFORM_STRUCTS, uniformStruct, structMismatch, uniformOf, type StructInfo } from '../src/runtime/uniforms.js';
import { REPO_ROOT } from './util/golden-path.js';

/** The members of the struct bound as `var<uniform>` in WGSL text, as "name: type". */
function uniformMembers(wgsl: string): string[] {
  const text = wgsl.replace(/\/\/.*$/gm, '');
  const vars = [...text.matchAll(/var<uniform>\s*\w+\s*:\s*(\w+)/g)].map((m) => m[1]);
  if (vars.length !== 1) throw new Error(`expected one var<uniform>, found ${vars.length}`);
  const body = new RegExp(`struct\\s+${vars[0]}\\s*\\{([^}]*)\\}`).exec(text);
  if (!body) throw new Error(`struct ${vars[0]} not found`);
  return body[1]
    .split(',')
    .map((m) => m.trim().replace(/\s+/g, ' ').replace(/ ?: ?/, ': '))
    .filter((m) => m.length);
}

const described = (s: StructInfo) => s.names.map((n, i) => `${n}: ${s.kinds[i]}`);

/** The names a shader's directives define or test (#define / #ifdef / #ifndef / #if, every branch), includes too. */
function directiveNames(file: string, seen = new Set<string>()): Set<string> {
  const names = new Set<string>();
  if (seen.has(file)) return names;
  seen.add(file);
  const raw = readFileSync(join(SHADER_DIR, file), 'utf8');
  for (const m of raw.matchAll(/^\s*#(?:define|ifdef|ifndef|if)\s+(\w+)/gm)) names.add(m[1]);
  for (const m of raw.matchAll(/^\s*#include\s+"([^"]+)"/gm)) for (const n of directiveNames(m[1], seen)) names.add(n);
  return names;
}

beforeAll(async () => {
  // every op module declares its structs when loaded
  for (const f of readdirSync(join(REPO_ROOT, 'src/ops')).filter((f) => f.endsWith('.ts'))) await import(`../src/ops/${f.replace(/\.ts$/, '.js')}`);
});

test('every TS uniform struct matches its shader: names, order, scalar types, padding', () => {
  expect(UNIFORM_STRUCTS.length).toBeGreaterThanOrEqual(19);
  const bad: string[] = [];
  for (const s of UNIFORM_STRUCTS) {
    // members as written (the next test keeps every member name clear of the defines)
    const wgsl = uniformMembers(preprocess(s.file, s.defines, false));
    const ts = described(s);
    if (JSON.stringify(wgsl) !== JSON.stringify(ts))
      bad.push(`${s.file} ${JSON.stringify(s.defines)}:\n  wgsl ${wgsl.join(', ')}\n  ts   ${ts.join(', ')}`);
  }
  expect(bad).toEqual([]);
});

test('no uniform member shares its name with a define of its shader (defines replace whole identifiers)', () => {
  const clashes: string[] = [];
  for (const s of UNIFORM_STRUCTS) {
    const defined = directiveNames(s.file);
    for (const k of Object.keys(s.defines)) defined.add(k);
    for (const n of s.names) if (defined.has(n)) clashes.push(`${s.file} ${JSON.stringify(s.defines)}: member ${n}`);
  }
  expect(clashes).toEqual([]);
});

test('every shader with a uniform block has a description per struct it declares', () => {
  const missing: string[] = [];
  for (const f of readdirSync(SHADER_DIR).filter((f) => f.endsWith('.wgsl'))) {
    const raw = readFileSync(join(SHADER_DIR, f), 'utf8');
    const declared = raw.match(/var<uniform>/g)?.length ?? 0;
    const variants = new Set(UNIFORM_STRUCTS.filter((s) => s.file === f).map((s) => described(s).join()));
    if (variants.size < declared) missing.push(`${f}: ${declared} uniform structs, ${variants.size} described`);
  }
  expect(missing).toEqual([]);
});

test('the check fails on a swapped, missing or mistyped member', () => {
  const rope = UNIFORM_STRUCTS.find((s) => s.file === 'rope.wgsl')!;
  const wgsl = uniformMembers(preprocess('rope.wgsl', {}, false));
  expect(described(rope)).toEqual(wgsl);
  const swapped = [...rope.names];
  [swapped[1], swapped[2]] = [swapped[2], swapped[1]];
  const variants = [swapped, rope.names.slice(0, -1), rope.names.map((n, i) => (i === 3 ? `${n}:f32` : n))];
  for (const names of variants) {
    const s = uniformStruct('rope.wgsl', names);
    UNIFORM_STRUCTS.pop(); // keep the registry to the real descriptions
    expect(described(s)).not.toEqual(wgsl);
  }
});

test('packing: by name in struct order, f32 / i32 wrapped, padding zero, missing members fail', () => {
  const s = uniformStruct('t/pack.wgsl', ['n', 'eps:f32', 'off:i32', 'opt?', '_pad']);
  UNIFORM_STRUCTS.pop();
  const u = s({ off: -3, eps: 0.5, n: 7 });
  expect([...u]).toEqual([7, { f32: 0.5 }, { i32: -3 }, 0, 0]);
  expect(uniformOf(u, 'n')).toBe(7);
  expect(uniformOf(u, 'eps')).toBeNaN(); // a float is not a shape
  expect(() => s({ n: 1, eps: 0 } as never)).toThrow(/uniform off not given/);
  expect(structMismatch(u, 't/pack.wgsl', {})).toBeNull();
  expect(structMismatch(u, 'other.wgsl', {})).toMatch(/described for t\/pack.wgsl/);
  const conv = uniformStruct('t/pack.wgsl', ['n'], { CONV: true });
  UNIFORM_STRUCTS.pop();
  expect(structMismatch(conv({ n: 1 }), 't/pack.wgsl', { CONV: true })).toBeNull();
  expect(structMismatch(conv({ n: 1 }), 't/pack.wgsl', {})).toMatch(/CONV set/);
});

/** WGSL preprocessor (#include / #define / #ifdef / #if) and pipeline keys. CPU only. */
import { preprocess, pipelineKey, defineShader, SHADER_DIR } from '../src/runtime/shader-source.js';
import { Step1xError } from '../src/errors.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** Non-empty, trimmed lines of the output: what the tests compare. */
const lines = (s: string) => s.split('\n').map((l) => l.trim()).filter((l) => l.length);

describe('preprocess', () => {
  test('#include pulls a file once, however often and from wherever it is included', () => {
    defineShader('pp/inc-a.wgsl', 'fn a() {}\n#include "pp/inc-b.wgsl"');
    defineShader('pp/inc-b.wgsl', 'fn b() {}');
    defineShader('pp/inc-main.wgsl', '#include "pp/inc-a.wgsl"\n#include "pp/inc-b.wgsl"\n#include "pp/inc-a.wgsl"\nfn main() {}');
    expect(lines(preprocess('pp/inc-main.wgsl'))).toEqual(['fn a() {}', 'fn b() {}', 'fn main() {}']);
  });

  test('the real common/dtype.wgsl include exists and the shipped shaders preprocess', () => {
    expect(existsSync(join(SHADER_DIR, 'common', 'dtype.wgsl'))).toBe(true);
    const out = preprocess('elementwise.wgsl', { OP: 'add', BINARY: true });
    expect(out).toContain('out[i] = x + b[i % U.n_b]');
    expect(out).not.toContain('#');
  });

  test('#define substitutes whole words only; caller defines win over file defines', () => {
    defineShader('pp/def.wgsl', '#define TILE 16\n#define WT f32\nvar<workgroup> t: array<WT, TILE>;\nlet TILES = TILE_X + TILE; // WTx');
    expect(lines(preprocess('pp/def.wgsl'))).toEqual(['var<workgroup> t: array<f32, 16>;', 'let TILES = TILE_X + 16; // WTx']);
    expect(lines(preprocess('pp/def.wgsl', { TILE: 8, WT: 'u32' }))).toEqual(['var<workgroup> t: array<u32, 8>;', 'let TILES = TILE_X + 8; // WTx']);
  });

  test('booleans: true defines NAME as 1, false leaves it undefined', () => {
    defineShader('pp/bool.wgsl', '#ifdef A\na=A\n#endif\n#ifdef B\nb\n#endif');
    expect(lines(preprocess('pp/bool.wgsl', { A: true, B: false }))).toEqual(['a=1']);
  });

  test('nested #ifdef / #ifndef / #if == / #if != with #else', () => {
    defineShader(
      'pp/nest.wgsl',
      [
        '#ifdef OUTER',
        '  #if MODE == fast',
        '    fast',
        '    #ifndef INNER',
        '      no_inner',
        '    #else',
        '      inner',
        '    #endif',
        '  #else',
        '    slow',
        '  #endif // MODE',
        '  #if MODE != fast',
        '    not_fast',
        '  #endif',
        '#else',
        '  #ifdef INNER',
        '    inner_when_outer_off',
        '  #else',
        '    outer_off',
        '  #endif',
        '#endif',
      ].join('\n'),
    );
    const run = (d: Record<string, string | boolean>) => lines(preprocess('pp/nest.wgsl', d));
    expect(run({ OUTER: true, MODE: 'fast' })).toEqual(['fast', 'no_inner']);
    expect(run({ OUTER: true, MODE: 'fast', INNER: true })).toEqual(['fast', 'inner']);
    expect(run({ OUTER: true, MODE: 'slow' })).toEqual(['slow', 'not_fast']);
    expect(run({ OUTER: true })).toEqual(['slow', 'not_fast']); // undefined MODE: == false, != true
    expect(run({})).toEqual(['outer_off']);
    expect(run({ INNER: true })).toEqual(['inner_when_outer_off']); // and nothing from the inactive OUTER block
  });

  test('a #define inside an inactive block has no effect', () => {
    defineShader('pp/defskip.wgsl', '#ifdef NOPE\n#define X 1\n#endif\n#ifdef X\nhas_x\n#else\nno_x\n#endif');
    expect(lines(preprocess('pp/defskip.wgsl'))).toEqual(['no_x']);
  });

  const bad: [string, string, RegExp][] = [
    ['else-without-if', 'a\n#else', /shaders\/pp\/err-else-without-if.wgsl:2: #else without #if/],
    ['endif-without-if', '#endif', /err-endif-without-if.wgsl:1: #endif without #if/],
    ['unterminated', 'x\n#ifdef A\ny', /err-unterminated.wgsl:2: #if without #endif/],
    ['double-else', '#ifdef A\n#else\n#else\n#endif', /err-double-else.wgsl:3: second #else for the #if at line 1/],
    ['bad-if', '#if A > 3\n#endif', /err-bad-if.wgsl:1: cannot parse "#if A > 3"/],
    ['unknown', '#ifdef A\n#elif B\n#endif', /err-unknown.wgsl:2: unknown directive "#elif B"/],
    ['bad-include', '\n\n#include dtype.wgsl', /err-bad-include.wgsl:3: cannot parse/],
    ['missing-include', '#include "pp/does-not-exist.wgsl"', /err-missing-include.wgsl:1: shader file not found: shaders\/pp\/does-not-exist.wgsl/],
  ];
  for (const [name, src, re] of bad) {
    test(`error with file:line: ${name}`, () => {
      defineShader(`pp/err-${name}.wgsl`, src);
      let err: unknown;
      try {
        preprocess(`pp/err-${name}.wgsl`);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(Step1xError);
      expect((err as Error).message).toMatch(re);
    });
  }

  test('an error inside an included file names the included file and line', () => {
    defineShader('pp/inc-bad.wgsl', 'ok\nok\n#endif');
    defineShader('pp/inc-bad-main.wgsl', '#include "pp/inc-bad.wgsl"');
    expect(() => preprocess('pp/inc-bad-main.wgsl')).toThrow(/shaders\/pp\/inc-bad.wgsl:3: #endif without #if/);
  });

  test('a missing top-level file is a clear error', () => {
    expect(() => preprocess('no-such-kernel.wgsl')).toThrow(/shader file not found: shaders\/no-such-kernel.wgsl/);
  });
});

describe('pipelineKey', () => {
  test('format file:entry:A=1,B=f32 with sorted defines, false dropped', () => {
    expect(pipelineKey('gemm.wgsl', 'main', { WT: 'f32', ACT: 'silu', TILE: 64, OFF: false })).toBe('gemm.wgsl:main:ACT=silu,TILE=64,WT=f32');
    expect(pipelineKey('gemm.wgsl', 'main', { B: 'f32', A: 1 })).toBe('gemm.wgsl:main:A=1,B=f32');
    expect(pipelineKey('x.wgsl', 'k2')).toBe('x.wgsl:k2');
    expect(pipelineKey('x.wgsl', 'main', { Z: true })).toBe('x.wgsl:main:Z=true');
  });
  test('define order does not change the key', () => {
    expect(pipelineKey('a.wgsl', 'main', { X: 1, Y: 2, Z: 3 })).toBe(pipelineKey('a.wgsl', 'main', { Z: 3, X: 1, Y: 2 }));
  });
});

/**
 * WGSL loading with a tiny preprocessor:
 *   #include "common/dtype.wgsl"     textual include, relative to shaders/ (each file once)
 *   #define NAME value               adds a define (file-local defines after caller defines)
 *   #ifdef NAME / #ifndef NAME / #if NAME == value / #else / #endif   (nestable)
 * Defines are substituted as whole identifiers in the remaining text, so `WT` can stand for a type
 * and `TILE` for a number. Shapes never go here (they go in uniforms): defines are structure.
 */
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExitCode, Step1xError } from '../errors.js';

export type Defines = Record<string, string | number | boolean>;

function findShaderDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const cand = join(dir, 'shaders');
    if (existsSync(join(cand, 'common'))) return cand;
    dir = resolve(dir, '..');
  }
  throw new Error('shaders/ directory not found next to the step1x package');
}

export const SHADER_DIR = findShaderDir();

const fileCache = new Map<string, string>();

/**
 * Register in-memory WGSL under a file name (tests, generated kernels); it shadows shaders/<name>.
 * Later `#include "<name>"` and `gpu.dispatch({ file: name })` see this text.
 */
export function defineShader(name: string, code: string): void {
  fileCache.set(name, code);
}

/** A preprocessor error: a Step1xError whose message starts with `shaders/<file>:<line>`. */
function ppError(msg: string): Step1xError {
  return new Step1xError(`shader preprocessor: ${msg}`, ExitCode.GPU);
}

function readShader(name: string, from?: string): string {
  let s = fileCache.get(name);
  if (s === undefined) {
    const p = join(SHADER_DIR, name);
    if (!existsSync(p)) throw ppError(`${from ? from + ': ' : ''}shader file not found: shaders/${name}`);
    s = readFileSync(p, 'utf8');
    fileCache.set(name, s);
  }
  return s;
}

/** `substitute: false` keeps define names in the text (test/uniform-structs.test.ts reads struct members as written). */
export function preprocess(file: string, defines: Defines = {}, substitute = true): string {
  const defs = new Map<string, string>();
  for (const [k, v] of Object.entries(defines)) if (v !== false) defs.set(k, v === true ? '1' : String(v));
  const included = new Set<string>();
  const out: string[] = [];

  const expand = (name: string, from?: string) => {
    if (included.has(name)) return;
    included.add(name);
    const lines = readShader(name, from).split('\n');
    // One entry per open #if: whether its current branch is emitted, whether some branch was taken,
    // whether the enclosing block is emitted, whether #else was seen, and the opening line (errors).
    const stack: { active: boolean; taken: boolean; parentActive: boolean; sawElse: boolean; line: number }[] = [];
    const active = () => (stack.length ? stack[stack.length - 1].active : true);
    lines.forEach((line, i) => {
      // A trailing `// comment` on a directive line is allowed (`#endif // BINARY`).
      const t = line.trim().startsWith('#') ? line.replace(/\/\/.*$/, '').trim() : line.trim();
      const where = `shaders/${name}:${i + 1}`;
      if (t.startsWith('#ifdef ') || t.startsWith('#ifndef ') || t.startsWith('#if ')) {
        const p = active();
        let cond: boolean;
        if (t.startsWith('#ifdef ')) cond = defs.has(t.slice(7).trim());
        else if (t.startsWith('#ifndef ')) cond = !defs.has(t.slice(8).trim());
        else {
          const m = /^#if\s+(\w+)\s*(==|!=)\s*(\S+)$/.exec(t);
          if (!m) throw ppError(`${where}: cannot parse "${t}" (expected #if NAME == value or #if NAME != value)`);
          const eq = defs.get(m[1]) === m[3];
          cond = m[2] === '==' ? eq : !eq;
        }
        stack.push({ active: p && cond, taken: cond, parentActive: p, sawElse: false, line: i + 1 });
      } else if (t === '#else') {
        const top = stack[stack.length - 1];
        if (!top) throw ppError(`${where}: #else without #if`);
        if (top.sawElse) throw ppError(`${where}: second #else for the #if at line ${top.line}`);
        top.sawElse = true;
        top.active = top.parentActive && !top.taken;
        top.taken = true;
      } else if (t === '#endif') {
        if (!stack.pop()) throw ppError(`${where}: #endif without #if`);
      } else if (t.startsWith('#') && !/^#(include|define)\s/.test(t)) {
        // WGSL has no '#': an unknown directive (#elif, #undef, a typo) must not reach the compiler,
        // and is an error even in a skipped block so that it cannot hide there.
        throw ppError(`${where}: unknown directive "${t}"`);
      } else if (!active()) {
        // skipped
      } else if (t.startsWith('#include ')) {
        const m = /^#include\s+"([^"]+)"$/.exec(t);
        if (!m) throw ppError(`${where}: cannot parse "${t}" (expected #include "file.wgsl")`);
        expand(m[1], where);
      } else if (t.startsWith('#define ')) {
        const m = /^#define\s+(\w+)\s*(.*)$/.exec(t);
        if (!m) throw ppError(`${where}: cannot parse "${t}"`);
        if (!defs.has(m[1])) defs.set(m[1], m[2] || '1');
      } else {
        out.push(line);
      }
    });
    if (stack.length) throw ppError(`shaders/${name}:${stack[stack.length - 1].line}: #if without #endif`);
  };
  expand(file);
  let text = out.join('\n');
  if (defs.size && substitute) {
    const names = [...defs.keys()].sort((a, b) => b.length - a.length);
    const re = new RegExp(`\\b(${names.join('|')})\\b`, 'g');
    text = text.replace(re, (m) => defs.get(m)!);
  }
  return text;
}

/** Readable key `file:entry:A=1,B=f32` (sorted defines); also the GPU label of the pipeline. */
export function pipelineKey(file: string, entry: string, defines: Defines = {}): string {
  const d = Object.entries(defines)
    .filter(([, v]) => v !== false)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return `${file}:${entry}${d ? ':' + d : ''}`;
}

/**
 * Named uniform blocks. Each kernel's `struct Params` (binding 0) is described once in TS, next to the op
 * that dispatches it, as its member list in WGSL order:
 *
 *   const ROPE = uniformStruct('rope.wgsl', ['n', 'l', 'h', 'half', 'tbl_row', 'tbl_bstride', 'wg_x']);
 *   g.dispatch({ file: 'rope.wgsl', uniforms: ROPE({ n, l, h: H, half: Dh / 2, ... }), ... });
 *
 * A member is `name` (u32), `name:f32` / `name:i32`, `name?` (u32 that defaults to 0: fields one kernel of a
 * family ignores), or `_name` (padding, always 0, never given). test/uniform-structs.test.ts parses every
 * shader's struct through the preprocessor with each description's defines and checks names, order and
 * scalar types against it. The block carries its member names (the dry run and errors read fields by name).
 */
import type { Defines } from './shader-source.js';
import { fail } from '../errors.js';

/** A uniform scalar: plain numbers are u32; wrap signed or float values. */
export type Uniform = number | { i32: number } | { f32: number };
export const f32u = (v: number): Uniform => ({ f32: v });
export const i32u = (v: number): Uniform => ({ i32: v });

export type Scalar = 'u32' | 'i32' | 'f32';

/** What a struct description says: the shader, the defines that select this struct, members and types. */
export interface StructInfo {
  readonly file: string;
  /** Defines under which the shader's struct has these members; `false`: must not be set. */
  readonly defines: Defines;
  readonly names: readonly string[];
  readonly kinds: readonly Scalar[];
}

/** A packed uniform block: scalars in struct order, and the description when made by a UniformStruct. */
export type Uniforms = Uniform[] & { struct?: StructInfo };

type Name<F extends string> = F extends `${infer N}:${string}` ? Name<N> : F extends `${infer N}?` ? N : F;
type Required<F extends string> = F extends `_${string}` | `${string}?${string}` ? never : Name<F>;
type Optional<F extends string> = F extends `${string}?${string}` ? Name<F> : never;
/** The values a struct takes: every member by name, less padding; `?` members may be left out. */
export type UniformValues<F extends string> = { [K in Required<F>]: number } & { [K in Optional<F>]?: number };

export interface UniformStruct<F extends string = string> extends StructInfo {
  (v: UniformValues<F>): Uniforms;
}

/** Every struct described so far (the test checks them all against their shaders). */
export const UNIFORM_STRUCTS: UniformStruct[] = [];

export function uniformStruct<const F extends string>(file: string, members: readonly F[], defines: Defines = {}): UniformStruct<F> {
  const names: string[] = [], kinds: Scalar[] = [], given: (0 | 1 | 2)[] = []; // 0 padding, 1 required, 2 optional
  for (const m of members) {
    const [head, kind = 'u32'] = m.split(':');
    if (kind !== 'u32' && kind !== 'i32' && kind !== 'f32') fail(`${file}: uniform member "${m}" has an unknown scalar type`);
    const opt = head.endsWith('?');
    names.push(opt ? head.slice(0, -1) : head);
    kinds.push(kind);
    given.push(head.startsWith('_') ? 0 : opt ? 2 : 1);
  }
  if (names.length * 4 > 256) fail(`${file}: ${names.length} uniforms, at most 64`);
  const pack = (v: UniformValues<F>): Uniforms => {
    const vals = v as Record<string, number | undefined>;
    const out: Uniforms = new Array<Uniform>(names.length);
    for (let i = 0; i < names.length; i++) {
      let x = given[i] === 0 ? 0 : vals[names[i]];
      if (x === undefined) {
        if (given[i] === 1) fail(`${file}: uniform ${names[i]} not given`);
        x = 0;
      }
      out[i] = kinds[i] === 'u32' ? x : kinds[i] === 'f32' ? { f32: x } : { i32: x };
    }
    out.struct = info;
    return out;
  };
  const info: StructInfo = { file, defines, names, kinds };
  const s = Object.assign(pack, info) as UniformStruct<F>;
  UNIFORM_STRUCTS.push(s as unknown as UniformStruct);
  return s;
}

/**
 * Why a block does not fit a dispatch (another shader, or defines that select another struct), or null.
 * Defines are compared as set / not set: a struct selected by `CONV: true` needs CONV, `CONV: false` its absence.
 */
export function structMismatch(u: Uniforms, file: string, defines: Defines | undefined): string | null {
  const s = u.struct;
  if (!s) return null;
  if (s.file !== file) return `uniforms described for ${s.file}`;
  for (const [k, v] of Object.entries(s.defines)) {
    const set = defines?.[k] !== undefined && defines[k] !== false;
    if (set !== (v !== false)) return `uniforms described for ${k} ${v === false ? 'unset' : 'set'}`;
  }
  return null;
}

/** A field of a packed block by name (NaN when absent or not a u32): the dry run reads shapes this way. */
export function uniformOf(u: Uniforms | undefined, name: string): number {
  const i = u?.struct ? u.struct.names.indexOf(name) : -1;
  const x = i >= 0 ? u![i] : undefined;
  return typeof x === 'number' ? x : NaN;
}

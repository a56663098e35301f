/**
 * Checkpoint: one logical set of named tensors over one or more safetensors files.
 *   - a single `.safetensors` file;
 *   - a directory with one `*.safetensors.index.json` (Hugging Face sharding: `weight_map` name → shard),
 *     or that index file itself;
 *   - a directory holding exactly one `.safetensors`;
 *   - an explicit list of files (`Checkpoint.openFiles`), names must be unique across them.
 * Only headers are read at open; tensor bytes are read on demand by positional reads.
 *
 * `checkKeys` compares the key set and shapes against what a model expects and reports every
 * missing / unexpected / mis-shaped key by name in one Step1xError(ExitCode.WEIGHTS).
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, sep } from 'node:path';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { SafetensorsFile, isStDType, type StDType, type TensorInfo } from './safetensors.js';

export class Checkpoint {
  private constructor(
    /** What the user passed (file or directory). */
    readonly path: string,
    readonly files: SafetensorsFile[],
    private readonly owner: Map<string, SafetensorsFile>,
    /** The index's `metadata` (sharded) or the single file's `__metadata__`. */
    readonly metadata: Record<string, unknown>,
  ) {}

  static async open(path: string): Promise<Checkpoint> {
    let st;
    try {
      st = await stat(path);
    } catch {
      throw new Step1xError(`${path}: no such file or directory`, ExitCode.WEIGHTS);
    }
    if (!st.isDirectory() && path.endsWith('.safetensors.index.json')) return Checkpoint.openIndex(dirname(path), path);
    if (!st.isDirectory()) {
      const f = await SafetensorsFile.open(path);
      return new Checkpoint(path, [f], new Map(f.keys().map((k) => [k, f])), { ...f.metadata });
    }
    const names = (await readdir(path)).sort();
    const indexes = names.filter((n) => n.endsWith('.safetensors.index.json'));
    if (indexes.length > 1)
      throw new Step1xError(`${path}: ${indexes.length} index files (${indexes.join(', ')}); pass one checkpoint file or directory`, ExitCode.USAGE);
    if (indexes.length === 1) return Checkpoint.openIndex(path, join(path, indexes[0]));
    const st1 = names.filter((n) => n.endsWith('.safetensors'));
    if (st1.length === 1) return Checkpoint.open(join(path, st1[0]));
    if (st1.length === 0) throw new Step1xError(`${path}: no .safetensors file or *.safetensors.index.json in this directory`, ExitCode.WEIGHTS);
    throw new Step1xError(
      `${path}: ${st1.length} .safetensors files (${st1.slice(0, 5).join(', ')}${st1.length > 5 ? ', ...' : ''}) and no *.safetensors.index.json; pass one file`,
      ExitCode.USAGE,
    );
  }

  /** Several files as one checkpoint; a name present in two files is an error. */
  static async openFiles(paths: string[], label = paths.join(',')): Promise<Checkpoint> {
    const files: SafetensorsFile[] = [];
    const owner = new Map<string, SafetensorsFile>();
    try {
      for (const p of paths) {
        const f = await SafetensorsFile.open(p);
        files.push(f);
        for (const k of f.keys()) {
          const prev = owner.get(k);
          if (prev) throw new Step1xError(`tensor "${k}" is in both ${prev.path} and ${p}`, ExitCode.WEIGHTS);
          owner.set(k, f);
        }
      }
    } catch (e) {
      await Promise.all(files.map((f) => f.close()));
      throw e;
    }
    return new Checkpoint(label, files, owner, {});
  }

  private static async openIndex(dir: string, indexPath: string): Promise<Checkpoint> {
    const badIndex = (msg: string): never => {
      throw new Step1xError(`${indexPath}: ${msg}`, ExitCode.USAGE);
    };
    let json: unknown;
    try {
      json = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (e) {
      badIndex(`not a valid JSON index (${(e as Error).message.split('\n')[0]})`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) badIndex('not a JSON object');
    const idx = json as Record<string, unknown>;
    const wm = idx.weight_map;
    if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) badIndex('"weight_map" is missing or not an object of name -> shard file');
    const map = wm as Record<string, unknown>;
    const shards = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(map)) {
      if (typeof shard !== 'string' || !shard) badIndex(`weight_map["${name}"] is ${JSON.stringify(shard)}, not a file name`);
      const s = shard as string;
      if (isAbsolute(s) || normalize(s).split(sep).includes('..')) badIndex(`weight_map["${name}"] = "${s}" points outside the directory`);
      if (!shards.has(s)) shards.set(s, []);
      shards.get(s)!.push(name);
    }
    if (shards.size === 0) badIndex('"weight_map" is empty');
    const missing: string[] = [];
    for (const s of shards.keys()) {
      try {
        await stat(join(dir, s));
      } catch {
        missing.push(s);
      }
    }
    if (missing.length)
      throw new Step1xError(`${dir}: shard${missing.length > 1 ? 's' : ''} listed in ${indexPath.split(sep).pop()} not found: ${missing.join(', ')}`, ExitCode.WEIGHTS);
    const files: SafetensorsFile[] = [];
    const owner = new Map<string, SafetensorsFile>();
    try {
      for (const [s, names] of shards) {
        const f = await SafetensorsFile.open(join(dir, s));
        files.push(f);
        const absent = names.filter((n) => !f.has(n));
        if (absent.length)
          throw new Step1xError(
            `${f.path}: ${absent.length} tensor${absent.length > 1 ? 's' : ''} the index maps to this shard ${absent.length > 1 ? 'are' : 'is'} not in it: ${listNames(absent)}`,
            ExitCode.WEIGHTS,
          );
        for (const n of names) owner.set(n, f);
      }
    } catch (e) {
      await Promise.all(files.map((f) => f.close()));
      throw e;
    }
    const meta = typeof idx.metadata === 'object' && idx.metadata !== null ? (idx.metadata as Record<string, unknown>) : {};
    return new Checkpoint(dir, files, owner, meta);
  }

  keys(): string[] {
    return [...this.owner.keys()];
  }
  has(name: string): boolean {
    return this.owner.has(name);
  }
  get size(): number {
    return this.owner.size;
  }
  info(name: string): TensorInfo {
    const f = this.owner.get(name);
    if (!f) throw new Step1xError(`${this.path}: checkpoint has no tensor "${name}"`, ExitCode.WEIGHTS);
    return f.info(name);
  }
  fileOf(name: string): SafetensorsFile {
    this.info(name);
    return this.owner.get(name)!;
  }
  readBytes(name: string): Promise<Uint8Array> {
    return this.fileOf(name).readBytes(name);
  }
  readRowsBytes(name: string, start: number, count: number): Promise<Uint8Array> {
    return this.fileOf(name).readRowsBytes(name, start, count);
  }
  /** One tensor's raw bytes as chunks of reused read buffers, the next read in flight (SafetensorsFile.tensorChunks). */
  tensorChunks(name: string, chunkBytes?: number): AsyncGenerator<Uint8Array> {
    return this.fileOf(name).tensorChunks(name, chunkBytes);
  }
  readF32(name: string): Promise<Float32Array> {
    return this.fileOf(name).readF32(name);
  }
  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

function listNames(names: string[], max = 20): string {
  return names.slice(0, max).join(', ') + (names.length > max ? `, ... (${names.length - max} more)` : '');
}

export interface CheckKeysOptions {
  /** Names to leave out of the comparison on both sides (e.g. `lm_head.weight`, which Step1X never uses). */
  ignore?: (name: string) => boolean;
  /** What the checkpoint is, for the message ("DiT checkpoint"). */
  what?: string;
  /** How many names to list at most (default 20). */
  maxListed?: number;
}

/**
 * Compare a checkpoint with the expected `name → shape` set. Throws one Step1xError(WEIGHTS) whose single
 * line gives the counts and up to `maxListed` names with shapes, missing first.
 */
export function checkKeys(ckpt: Checkpoint, expected: Map<string, number[]>, opts: CheckKeysOptions = {}): void {
  const ignore = opts.ignore ?? (() => false);
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [name, shape] of expected) {
    if (ignore(name)) continue;
    if (!ckpt.has(name)) missing.push(`${name} ${fmtShape(shape)}`);
    else {
      const got = ckpt.info(name).shape;
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) wrong.push(`${name} is ${fmtShape(got)}, expected ${fmtShape(shape)}`);
    }
  }
  const unexpected = ckpt
    .keys()
    .filter((k) => !expected.has(k) && !ignore(k))
    .map((k) => `${k} ${fmtShape(ckpt.info(k).shape)}`);
  if (!missing.length && !wrong.length && !unexpected.length) return;
  // Share the name budget between the kinds (a small kind's leftover goes to the bigger ones), so a
  // wrong shape is never hidden behind 100 missing keys.
  const max = opts.maxListed ?? 20;
  const kinds = ([['missing', missing], ['wrong shape', wrong], ['unexpected', unexpected]] as const).filter(([, l]) => l.length);
  const shown = new Map<string, number>();
  let budget = max;
  [...kinds].sort((a, b) => a[1].length - b[1].length).forEach(([label, list], i, arr) => {
    const n = Math.min(list.length, Math.floor(budget / (arr.length - i)));
    shown.set(label, n);
    budget -= n;
  });
  const parts = kinds.map(([label, list]) => {
    const n = shown.get(label)!;
    const more = list.length - n;
    return `${list.length} ${label}${n ? ': ' + list.slice(0, n).join(', ') : ''}${more ? `, ... (${more} more)` : ''}`;
  });
  throw new Step1xError(`${opts.what ?? 'checkpoint'} ${ckpt.path} does not match the model: ${parts.join('; ')}`, ExitCode.WEIGHTS);
}

export interface ShapeEntry {
  name: string;
  dtype: StDType;
  shape: number[];
}

const DTYPE_ALIASES: Record<string, StDType> = {
  f32: 'F32', float32: 'F32', f16: 'F16', float16: 'F16', bf16: 'BF16', bfloat16: 'BF16', f64: 'F64', float64: 'F64',
  i64: 'I64', int64: 'I64', i32: 'I32', int32: 'I32', u8: 'U8', uint8: 'U8', bool: 'BOOL',
};

/**
 * Entries of a shapes list as in ../shared/golden/real_shapes*: `{ tensors: [{name, shape, dtype}] }`
 * (real_shapes/*.json, dtype 'f32'/'bf16') or `{ parameters: [...] }` (real_shapes_qwen/params.json,
 * dtype 'bfloat16'), or a plain `{ name: shape }` object.
 */
export async function shapesJsonEntries(path: string): Promise<ShapeEntry[]> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new Step1xError(`${path}: cannot read shapes list (${(e as Error).message.split('\n')[0]})`, ExitCode.USAGE);
  }
  const o = json as Record<string, unknown>;
  const list = Array.isArray(o?.tensors) ? o.tensors : Array.isArray(o?.parameters) ? o.parameters : null;
  const raw: { name: unknown; shape: unknown; dtype?: unknown }[] =
    list ?? (o && typeof o === 'object' ? Object.entries(o).map(([name, shape]) => ({ name, shape })) : []);
  return raw.map((e, i) => {
    if (typeof e?.name !== 'string' || !Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0))
      throw new Step1xError(`${path}: entry ${i} is not {name, shape}`, ExitCode.USAGE);
    const d = typeof e.dtype === 'string' ? e.dtype : 'F32';
    const dtype = isStDType(d) ? d : DTYPE_ALIASES[d.toLowerCase()];
    if (!dtype) throw new Step1xError(`${path}: entry "${e.name}" has unknown dtype "${d}"`, ExitCode.USAGE);
    return { name: e.name, dtype, shape: e.shape as number[] };
  });
}

/** `name → shape` of a shapes list (see shapesJsonEntries), for checkKeys. */
export async function expectedFromShapesJson(path: string): Promise<Map<string, number[]>> {
  return new Map((await shapesJsonEntries(path)).map((e) => [e.name, e.shape]));
}

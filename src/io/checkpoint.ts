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
import { SafetensorsFile, bytesToF32, isStDType, numelOfShape, type StDType, type TensorInfo } from './safetensors.js';

const numel = numelOfShape;

/** A tensor of a renamed view (Checkpoint.view): rows of source tensors concatenated along dim 0, then given `shape`. */
export type ViewPart = string | { name: string; start: number; count: number };
export interface ViewEntry {
  /** whole tensors, or rows [start, start + count) of one */
  parts: ViewPart[];
  /** same element count as the parts together; default: the parts' shape with dim 0 summed */
  shape?: number[];
}

export class Checkpoint {
  /** name → its source parts and header, for a renamed view (another layout's names under ours). */
  private views?: Map<string, { parts: { name: string; start: number; count: number; whole: boolean }[]; info: TensorInfo }>;
  /** How the loaders above read these tensors (nn/weight.ts WeightPolicy), carried by this object: withPolicy. */
  private loadPolicy?: object;

  private constructor(
    /** What the user passed (file or directory). */
    readonly path: string,
    readonly files: SafetensorsFile[],
    private readonly owner: Map<string, SafetensorsFile>,
    /** The index's `metadata` (sharded) or the single file's `__metadata__`. */
    readonly metadata: Record<string, unknown>,
  ) {}

  /**
   * The tensors of `src` under other names (io/diffusers-layout.ts maps diffusers names onto the official
   * ones): each entry is one source tensor, possibly reshaped (a 1×1 conv as a matrix), or the row-wise
   * concatenation of several (to_q, to_k, to_v → qkv), read part by part. Names of `src` not used by any
   * entry are dropped. The view owns `src`'s files: close the view, not `src`.
   */
  static view(src: Checkpoint, entries: Map<string, ViewEntry>): Checkpoint {
    const owner = new Map<string, SafetensorsFile>();
    const views = new Map<string, { parts: { name: string; start: number; count: number; whole: boolean }[]; info: TensorInfo }>();
    for (const [name, e] of entries) {
      if (!e.parts.length) throw new Step1xError(`${src.path}: view entry "${name}" has no source tensor`, ExitCode.WEIGHTS);
      const parts = e.parts.map((p) => {
        const n = typeof p === 'string' ? p : p.name;
        const rows = src.info(n).shape[0] ?? 1;
        const r = typeof p === 'string' ? { name: n, start: 0, count: rows, whole: true } : { ...p, whole: p.start === 0 && p.count === rows };
        if (!(r.start >= 0 && r.count > 0 && r.start + r.count <= rows)) throw new Step1xError(`${src.path}: rows [${r.start}, ${r.start + r.count}) of "${n}" (${rows} rows) do not exist`, ExitCode.WEIGHTS);
        return r;
      });
      const infos = parts.map((p) => src.info(p.name));
      const first = infos[0];
      const rest = first.shape.slice(1);
      for (const [i, inf] of infos.entries()) {
        if (inf.dtype !== first.dtype || inf.shape.length !== first.shape.length || inf.shape.slice(1).some((d, j) => d !== rest[j]))
          throw new Step1xError(`${src.path}: "${parts[i].name}" ${inf.dtype} ${fmtShape(inf.shape)} cannot be stacked with "${parts[0].name}" ${first.dtype} ${fmtShape(first.shape)} into "${name}"`, ExitCode.WEIGHTS);
        if (inf.quant && (parts.length > 1 || !parts[0].whole)) throw new Step1xError(`${src.path}: "${parts[i].name}" is ${inf.quant.format}; split tensors must be stored unpacked`, ExitCode.WEIGHTS);
      }
      const joined = first.shape.length ? [parts.reduce((s, p) => s + p.count, 0), ...rest] : [];
      const shape = e.shape ?? joined;
      if (numel(shape) !== numel(joined)) throw new Step1xError(`${src.path}: view "${name}" ${fmtShape(shape)} does not hold the ${numel(joined)} elements of ${parts.map((p) => p.name).join(' + ')}`, ExitCode.WEIGHTS);
      const single = parts.length === 1 && parts[0].whole;
      const bytes = (first.end - first.begin) / Math.max(1, numel(first.shape)) * numel(shape);
      owner.set(name, src.fileOf(parts[0].name));
      views.set(name, { parts, info: { ...first, name, shape, ...(single ? {} : { end: first.begin + bytes }) } });
    }
    const c = new Checkpoint(src.path, src.files, owner, src.metadata);
    c.views = views;
    c.loadPolicy = src.loadPolicy;
    return c;
  }

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

  /**
   * These tensors under a load policy (nn/weight.ts `withWeightPolicy`: target format, LoRAs, keep-list, where
   * packing runs): a new Checkpoint over the same files and names that the loaders it is passed to read the
   * policy from, so that a load's settings travel with its argument (this object keeps its own). Closing
   * either closes the shared files.
   */
  withPolicy(policy: object | undefined): Checkpoint {
    const c = new Checkpoint(this.path, this.files, this.owner, this.metadata);
    c.views = this.views;
    c.loadPolicy = policy;
    return c;
  }
  get policy(): object | undefined {
    return this.loadPolicy;
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
    return this.views?.get(name)?.info ?? f.info(name);
  }
  fileOf(name: string): SafetensorsFile {
    this.info(name);
    return this.owner.get(name)!;
  }
  async readBytes(name: string): Promise<Uint8Array> {
    const v = this.views?.get(name);
    if (!v) return this.fileOf(name).readBytes(name);
    const chunks: Uint8Array[] = [];
    for (const p of v.parts) {
      const f = this.ownerOfPart(p.name);
      chunks.push(p.whole ? await f.readBytes(p.name) : await f.readRowsBytes(p.name, p.start, p.count));
    }
    if (chunks.length === 1) return chunks[0];
    const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
    let at = 0;
    for (const c of chunks) (out.set(c, at), (at += c.length));
    return out;
  }
  async readRowsBytes(name: string, start: number, count: number): Promise<Uint8Array> {
    const v = this.views?.get(name);
    if (!v) return this.fileOf(name).readRowsBytes(name, start, count);
    const p = v.parts[0];
    if (v.parts.length === 1 && v.info.shape[0] === p.count) return this.ownerOfPart(p.name).readRowsBytes(p.name, p.start + start, count);
    const all = await this.readBytes(name); // a stacked or reshaped view: rows of the joined bytes
    const row = all.length / v.info.shape[0];
    return all.slice(start * row, (start + count) * row);
  }
  /** One tensor's raw bytes as chunks of reused read buffers, the next read in flight (SafetensorsFile.tensorChunks). */
  async *tensorChunks(name: string, chunkBytes?: number): AsyncGenerator<Uint8Array> {
    const v = this.views?.get(name);
    if (!v) return yield* this.fileOf(name).tensorChunks(name, chunkBytes);
    if (v.parts.length === 1 && v.parts[0].whole) return yield* this.ownerOfPart(v.parts[0].name).tensorChunks(v.parts[0].name, chunkBytes);
    yield await this.readBytes(name); // a joined view (split q/k/v): its bytes in one piece
  }
  /**
   * A positional reader of one tensor's raw bytes: `read(dst, at)` fills `dst` with bytes [at, at + dst.length)
   * (streamed loads read straight into GPU staging memory, nn/upload.ts). A joined view (split q/k/v) is
   * read whole once, on the first call, and copied from.
   */
  tensorReader(name: string): (dst: Uint8Array, at: number) => Promise<void> {
    const v = this.views?.get(name);
    const whole = !v ? { f: this.fileOf(name), n: name } : v.parts.length === 1 && v.parts[0].whole ? { f: this.ownerOfPart(v.parts[0].name), n: v.parts[0].name } : null;
    if (whole) return (dst, at) => whole.f.readTensorInto(whole.n, dst, at);
    let joined: Promise<Uint8Array> | null = null;
    return async (dst, at) => {
      const all = await (joined ??= this.readBytes(name));
      if (at < 0 || at + dst.length > all.length) throw new Step1xError(`${this.path}: bytes [${at}, ${at + dst.length}) out of range for "${name}" (${all.length} bytes)`, ExitCode.USAGE);
      dst.set(all.subarray(at, at + dst.length));
    };
  }
  async readF32(name: string): Promise<Float32Array> {
    const v = this.views?.get(name);
    if (!v) return this.fileOf(name).readF32(name);
    if (v.parts.length === 1 && v.parts[0].whole) return this.ownerOfPart(v.parts[0].name).readF32(v.parts[0].name);
    return bytesToF32(this.path, v.info, await this.readBytes(name));
  }
  private ownerOfPart(part: string): SafetensorsFile {
    const f = this.files.find((x) => x.has(part));
    if (!f) throw new Step1xError(`${this.path}: checkpoint has no tensor "${part}"`, ExitCode.WEIGHTS);
    return f;
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

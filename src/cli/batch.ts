/**
 * `step1x batch <manifest.json> --input-dir IN --output-dir OUT`: the official manifest format
 * `{"image.png": "instruction", ...}`, models loaded once, built for CI jobs:
 *  - a bad entry (unreadable image, failed edit) is reported and skipped; the others are written; the
 *    command then exits non-zero with a count (the first failure's exit code). `--fail-fast` stops at
 *    the first failure instead. Model, GPU and interrupt errors always stop the batch.
 *  - output names (`<name>.png`, or the `--format` extension) are checked for collisions over the
 *    whole manifest (case-insensitively) before any work; the output directory is created.
 *  - `--skip-existing` leaves entries whose output exists (outputs are written atomically, so an
 *    existing file is complete): rerunning an interrupted batch completes the rest.
 *  - `--shard I/N` takes manifest entries I, I+N, I+2N, ... (0-based, manifest order), so a CI matrix or
 *    a Kubernetes Indexed Job (`--shard auto/N` reads $JOB_COMPLETION_INDEX) splits a manifest without
 *    coordination. Collisions are checked on the whole manifest, so every shard agrees.
 *  - `--report FILE` appends one JSON line per selected entry as it finishes (index, input, output,
 *    status ok|failed|skipped, error, exit_code, seed, timings_s); it is never truncated, so shards may
 *    share one report and a resumed run adds its lines.
 */
import type { Command } from 'commander';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { ensureOutputDir, openAppendLog, registerRunInput, type AppendLog } from '../io/safe-write.js';
import { isPlainRelativePath, readCheckedText } from '../io/safe-read.js';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { ExitCode, Step1xError, type ExitCodeValue } from '../errors.js';
import { resolveModelFiles } from '../io/model-files.js';
import { outputFormatFor } from '../io/encode.js';
import type { EditResult } from '../pipeline/edit-pipeline.js';
import { installInterruptCleanup, readInputImage, setInterruptNote } from '../pipeline/output.js';
import { checkOptionsUpFront, checkWritable, editOptions, requestFromOptions, runOne, summary, withPipeline, type EditCliOptions } from './edit.js';
import { createReporter, fmtSeconds, plural, type Reporter } from './progress.js';
import { checkInstruction } from './options.js';
import { sanitizeForTerminal } from './sanitize.js';

export interface BatchEntry {
  /** Position in the manifest (0-based). */
  index: number;
  /** The manifest key (relative to the input directory). */
  name: string;
  instruction: string;
  input: string;
  output: string;
}

/** Manifests beyond this are refused before they are read (100k entries with long instructions fit). */
export const MAX_MANIFEST_BYTES = 256 << 20;

/**
 * The keys of the top-level object in source order, duplicates included (JSON.parse keeps only the last
 * of a duplicated key, silently dropping the others). One linear pass; `text` is known to be valid JSON.
 */
export function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === '\\') i++;
      if (depth !== 1) continue;
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j])) j++;
      if (text[j] === ':') keys.push(JSON.parse(text.slice(start, i + 1)) as string);
    }
  }
  return keys;
}

/** A manifest key: a relative path inside --input-dir (no `..`, not absolute, no control character). */
export function checkManifestKey(k: string): void {
  if (!k) throw new Error('an image name is empty');
  if (!isPlainRelativePath(k))
    throw new Error(`image name ${JSON.stringify(k)} is not a relative path inside --input-dir (no "..", no leading "/", no empty or "." part, no backslash or control character)`);
}

/** The manifest `{"image.png": "instruction", ...}` as entries in file order. */
export function parseManifest(path: string): [string, string][] {
  try {
    const text = readCheckedText(path, MAX_MANIFEST_BYTES, 'manifest').replace(/^\uFEFF/, ''); // a BOM is not part of the JSON
    const j = JSON.parse(text) as unknown;
    if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('expected a JSON object {"image.png": "instruction", ...}');
    const entries = Object.entries(j as Record<string, unknown>);
    const keys = topLevelKeys(text);
    if (keys.length !== entries.length) {
      const seen = new Set<string>();
      const dup = keys.find((k) => (seen.has(k) ? true : (seen.add(k), false)));
      throw new Error(`image name ${JSON.stringify(dup)} appears more than once (JSON keeps only the last instruction); give each image one entry`);
    }
    return entries.map(([k, v]) => {
      checkManifestKey(k);
      if (typeof v !== 'string') throw new Error(`instruction for ${JSON.stringify(k)} is not a string`);
      return [k, v];
    });
  } catch (e) {
    if (e instanceof Step1xError) throw e;
    throw new Step1xError(`manifest ${path}: ${(e as Error).message}`, ExitCode.USAGE);
  }
}

/**
 * `--shard I/N` (0 <= I < N); `auto/N` takes I from the scheduler: $JOB_COMPLETION_INDEX (a Kubernetes
 * Indexed Job), else $SLURM_ARRAY_TASK_ID minus $SLURM_ARRAY_TASK_MIN (a Slurm array, `--array=1-N` works
 * as `0-(N-1)` does); a Slurm array of another size than N is refused (some entries would never run).
 */
export function parseShard(v: string | undefined, env: NodeJS.ProcessEnv = process.env): { index: number; count: number } | undefined {
  if (v === undefined) return undefined;
  const m = /^\s*(\d+|auto)\s*\/\s*(\d+)\s*$/.exec(v);
  if (!m) throw new Step1xError(`--shard must be I/N (e.g. 0/4) or auto/N, got "${v}"`, ExitCode.USAGE);
  const count = Number(m[2]);
  let index = Number(m[1]);
  if (m[1] === 'auto') {
    const int = (name: string) => {
      const t = env[name] ?? '';
      if (!/^\d{1,9}$/.test(t)) throw new Step1xError(`--shard auto/${m[2]}: ${name} must be a non-negative integer, got "${t}"`, ExitCode.USAGE);
      return Number(t);
    };
    if (env.JOB_COMPLETION_INDEX !== undefined) index = int('JOB_COMPLETION_INDEX');
    else if (env.SLURM_ARRAY_TASK_ID !== undefined) {
      index = int('SLURM_ARRAY_TASK_ID') - (env.SLURM_ARRAY_TASK_MIN !== undefined ? int('SLURM_ARRAY_TASK_MIN') : 0);
      if (env.SLURM_ARRAY_TASK_COUNT !== undefined && int('SLURM_ARRAY_TASK_COUNT') !== count)
        throw new Step1xError(`--shard auto/${count}: the Slurm array has ${env.SLURM_ARRAY_TASK_COUNT} tasks; run it with --array=0-${count - 1} (or pass auto/${env.SLURM_ARRAY_TASK_COUNT})`, ExitCode.USAGE);
    } else
      throw new Step1xError(`--shard auto/${m[2]} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (a Slurm array)`, ExitCode.USAGE);
  }
  if (!(count >= 1) || !Number.isSafeInteger(count) || !(index >= 0) || index >= count) throw new Step1xError(`--shard ${v}: need 0 <= I < N and N >= 1 (I = ${index})`, ExitCode.USAGE);
  return { index, count };
}

export interface BatchPlanOptions {
  inputDir: string;
  outputDir: string;
  /** Output extension with the dot (default .png). */
  ext?: string;
  shard?: { index: number; count: number };
  skipExisting?: boolean;
}

export interface BatchPlan {
  /** Entries of this shard to run. */
  run: BatchEntry[];
  /** Entries of this shard left alone because their output exists (--skip-existing). */
  existing: BatchEntry[];
  /** Manifest size. */
  total: number;
}

/** Output paths for every entry; throws (before any work) when two entries would write the same file. */
export function planBatch(entries: [string, string][], o: BatchPlanOptions): BatchPlan {
  const ext = o.ext ?? '.png';
  const all: BatchEntry[] = entries.map(([name, instruction], index) => ({
    index, name, instruction, input: join(o.inputDir, name), output: join(o.outputDir, `${basename(name, extname(name))}${ext}`),
  }));
  // case-insensitively: a.png and A.PNG are one file on macOS and Windows file systems. One pass; the
  // message names at most 3 clashes of 3 names each, however many there are.
  const byOut = new Map<string, BatchEntry[]>();
  let clashes = 0;
  for (const e of all) {
    const k = e.output.toLowerCase();
    const v = byOut.get(k);
    if (!v) byOut.set(k, [e]);
    else if (v.push(e) === 2) clashes++;
  }
  if (clashes) {
    const shown = [...byOut.values()].filter((v) => v.length > 1).slice(0, 3);
    const names = (v: BatchEntry[]) => v.slice(0, 3).map((e) => `"${e.name}"`).join(' and ') + (v.length > 3 ? ` and ${v.length - 3} more` : '');
    throw new Step1xError(
      `manifest: output names collide, nothing was run: ` +
        shown.map((v) => `${names(v)} would all write ${basename(v[0].output)}`).join('; ') +
        `${clashes > 3 ? `; ${clashes - 3} more collisions` : ''} (rename the inputs)`,
      ExitCode.USAGE,
    );
  }
  const mine = o.shard ? all.filter((e) => e.index % o.shard!.count === o.shard!.index) : all;
  const done = (e: BatchEntry) => o.skipExisting && existsSync(e.output) && statSync(e.output).isFile() && statSync(e.output).size > 0;
  return { run: mine.filter((e) => !done(e)), existing: mine.filter(done), total: all.length };
}

/** One report line (`--report FILE`, JSON lines). */
export interface BatchRecord {
  index: number;
  input: string;
  output: string;
  status: 'ok' | 'failed' | 'skipped';
  error?: string;
  exit_code?: number;
  seed?: number;
  timings_s?: Record<string, number>;
}

/** Errors after which nothing else can succeed: the batch stops whatever --fail-fast says. */
const FATAL: ReadonlySet<number> = new Set<number>([ExitCode.WEIGHTS, ExitCode.NO_GPU, ExitCode.GPU, ExitCode.INTERRUPTED]);

export interface BatchRunOptions {
  failFast?: boolean;
  rep: Reporter;
  /** Called with every record as it is decided (report file, --json). */
  onRecord?: (r: BatchRecord, res?: EditResult) => void;
}

export interface BatchOutcome {
  ok: number;
  failed: BatchRecord[];
  skipped: number;
}

/**
 * Run the plan: `edit(entry)` reads, edits and writes one entry. A failing entry is reported and the
 * batch goes on (unless failFast or the error is fatal, then it is rethrown after its record).
 */
export async function runBatch(plan: BatchPlan, edit: (e: BatchEntry) => Promise<EditResult>, o: BatchRunOptions): Promise<BatchOutcome> {
  const out: BatchOutcome = { ok: 0, failed: [], skipped: 0 };
  const n = plan.run.length + plan.existing.length;
  for (const e of plan.existing) {
    out.skipped++;
    o.onRecord?.({ index: e.index, input: e.input, output: e.output, status: 'skipped' });
  }
  if (plan.existing.length) o.rep.done(`skipping ${plural(plan.existing.length, 'entry', 'entries')} whose output exists (--skip-existing)`);
  let i = plan.existing.length;
  for (const e of plan.run) {
    i++;
    try {
      const res = await edit(e);
      out.ok++;
      setInterruptNote(`${plural(out.ok, 'output')} written, ${plan.run.length - out.ok - out.failed.length} not; run again with --skip-existing to finish`);
      o.rep.done(`[${i}/${n}] ${e.name} → ${e.output} (${fmtSeconds(res.timings.total ?? 0)})`);
      o.onRecord?.({ index: e.index, input: e.input, output: e.output, status: 'ok', seed: res.seed, timings_s: res.timings }, res);
    } catch (err) {
      const code: ExitCodeValue = err instanceof Step1xError ? err.code : ExitCode.GPU;
      const msg = (err as Error)?.message ?? String(err);
      const rec: BatchRecord = { index: e.index, input: e.input, output: e.output, status: 'failed', error: msg, exit_code: code };
      out.failed.push(rec);
      o.rep.fail(`[${i}/${n}] ${e.name}: ${msg}`);
      o.onRecord?.(rec);
      // a full disk fails every later entry too: stop instead of running each edit for nothing
      if (o.failFast || FATAL.has(code) || (code === ExitCode.OUTPUT && /\((ENOSPC|EDQUOT|EROFS)\)/.test(msg))) throw err;
    }
  }
  return out;
}

function sameDir(a: string, b: string): boolean {
  const sa = statSync(a), sb = statSync(b);
  return sa.dev === sb.dev && sa.ino === sb.ino;
}

/**
 * --skip-existing trusts an existing output only when it decodes (a 100-byte PNG cut by a crash or a copy
 * is not "done"); the others run again and are replaced atomically.
 */
export async function redoUndecodable(plan: BatchPlan, quiet?: boolean, decodes = async (p: string) => readInputImage(p).then(() => true, () => false)): Promise<BatchPlan> {
  const bad: BatchEntry[] = [];
  const good: BatchEntry[] = [];
  for (const e of plan.existing) ((await decodes(e.output)) ? good : bad).push(e);
  if (!bad.length) return plan;
  if (!quiet) process.stderr.write(sanitizeForTerminal(`step1x: note: ${plural(bad.length, 'existing output does', 'existing outputs do')} not decode and will be written again: ${bad.slice(0, 3).map((e) => basename(e.output)).join(', ')}${bad.length > 3 ? ', ...' : ''}`) + '\n');
  return { ...plan, existing: good, run: [...plan.run, ...bad].sort((a, b) => a.index - b.index) };
}

interface BatchCliOptions extends EditCliOptions {
  inputDir: string;
  outputDir: string;
  failFast?: boolean;
  skipExisting?: boolean;
  shard?: string;
  report?: string;
  format?: string;
}

export function register(program: Command): void {
  editOptions(
    program
      .command('batch')
      .description('edit many images with the official manifest format {"image.png": "instruction", ...}; models load once')
      .argument('<manifest>', 'JSON manifest mapping image file names to instructions')
      .requiredOption('--input-dir <dir>', 'directory holding the manifest images')
      .requiredOption('--output-dir <dir>', 'directory for the outputs, named after the inputs (created if missing)')
      .option('--format <ext>', 'output format: png, jpg, jpeg or webp', 'png')
      .option('--fail-fast', 'stop at the first failing entry (default: report it, go on, exit non-zero at the end)')
      .option('--skip-existing', 'leave entries whose output already exists (resume an interrupted batch)')
      .option('--shard <I/N>', 'run only manifest entries I, I+N, I+2N, ... (auto/N: I = $JOB_COMPLETION_INDEX, else $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN)')
      .option('--report <file>', 'append one JSON line per entry (input, output, status, error, timings, seed); never truncated'),
  ).action(async (manifest: string, o: BatchCliOptions) => {
    installInterruptCleanup();
    const base = requestFromOptions(o);
    await checkOptionsUpFront(o);
    const ext = `.${o.format ?? 'png'}`;
    outputFormatFor(`x${ext}`); // refuses an unknown format
    const shard = parseShard(o.shard);
    const entries = parseManifest(manifest);
    for (const [k, v] of entries) checkInstruction(v, `manifest ${manifest}: the instruction for ${JSON.stringify(k)}`);
    if (!existsSync(o.inputDir) || !statSync(o.inputDir).isDirectory()) throw new Step1xError(`--input-dir ${o.inputDir}: no such directory`, ExitCode.INPUT);
    if (existsSync(o.outputDir) && sameDir(o.inputDir, o.outputDir))
      throw new Step1xError(`--output-dir ${o.outputDir} is --input-dir: the edits would replace the inputs; choose another directory`, ExitCode.USAGE);
    let plan = planBatch(entries, { inputDir: o.inputDir, outputDir: o.outputDir, ext, shard, skipExisting: o.skipExisting });
    if (plan.existing.length) plan = await redoUndecodable(plan, o.quiet);
    registerRunInput(manifest, 'the manifest');
    for (const e of [...plan.run, ...plan.existing]) registerRunInput(e.input, `the input image of "${e.name}"`);
    ensureOutputDir(o.outputDir, `--output-dir ${o.outputDir}`);
    checkWritable(join(o.outputDir, `x${ext}`));
    let report: AppendLog | undefined;
    if (o.report) {
      ensureOutputDir(dirname(resolve(o.report)), `the directory of --report ${o.report}`);
      report = openAppendLog(o.report, '--report');
    }
    const rep = createReporter({ quiet: o.quiet });
    const onRecord = (r: BatchRecord, res?: EditResult) => {
      report?.append(`${JSON.stringify(r)}\n`);
      if (o.json && res) process.stdout.write(`${JSON.stringify(summary(res, r.output))}\n`);
    };
    const shardNote = shard ? ` (shard ${shard.index}/${shard.count} of ${plural(plan.total, 'entry', 'entries')})` : '';
    if (!plan.run.length) {
      // nothing to edit: no models are loaded
      const res = await runBatch(plan, () => Promise.reject(new Error('unreachable')), { rep, onRecord });
      rep.done(`batch: nothing to do${shardNote}, ${res.skipped} already written`);
      return;
    }
    let outcome: BatchOutcome | undefined;
    await withPipeline(resolveModelFiles(o.model, { version: base.version }), o, rep, async (pipe, meta) => {
      outcome = await runBatch(
        plan,
        async (e) => {
          const image = await readInputImage(e.input, { ignoreExif: o.ignoreExif });
          return runOne(pipe, { ...base, image, instruction: e.instruction }, { path: e.output }, rep, meta);
        },
        { rep, onRecord, failFast: o.failFast },
      );
    });
    const r = outcome!;
    const line = `batch${shardNote}: ${r.ok} written, ${r.failed.length} failed, ${r.skipped} skipped (existing)`;
    if (r.failed.length)
      throw new Step1xError(
        `${line}; ${plural(r.failed.length, 'entry', 'entries')} failed: ${r.failed.slice(0, 5).map((f) => basename(f.input)).join(', ')}${r.failed.length > 5 ? ', ...' : ''}`,
        (r.failed[0].exit_code ?? ExitCode.INPUT) as ExitCodeValue,
      );
    rep.done(line);
  });
}

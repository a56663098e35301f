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
import { basename, dirname, extname, join, resolve } from 'node:path';
import { ExitCode, Step1xError, type ExitCodeValue } from '../errors.js';
import { resolveModelFiles } from '../io/model-files.js';
import { outputFormatFor } from '../io/encode.js';
import type { EditResult } from '../pipeline/edit-pipeline.js';
import { installInterruptCleanup, readInputImage } from '../pipeline/output.js';
import { checkOptionsUpFront, checkWritable, editOptions, requestFromOptions, runOne, summary, withPipeline, type EditCliOptions } from './edit.js';
import { createReporter, fmtSeconds, plural, type Reporter } from './progress.js';

export interface BatchEntry {
  /** Position in the manifest (0-based). */
  index: number;
  /** The manifest key (relative to the input directory). */
  name: string;
  instruction: string;
  input: string;
  output: string;
}

/** The manifest `{"image.png": "instruction", ...}` as entries in file order. */
export function parseManifest(path: string): [string, string][] {
  try {
    const j = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('expected a JSON object {"image.png": "instruction", ...}');
    return Object.entries(j as Record<string, unknown>).map(([k, v]) => {
      if (typeof v !== 'string') throw new Error(`instruction for "${k}" is not a string`);
      if (!k) throw new Error('an image name is empty');
      return [k, v];
    });
  } catch (e) {
    throw new Step1xError(`manifest ${path}: ${(e as Error).message}`, ExitCode.USAGE);
  }
}

/** `--shard I/N` (0 <= I < N); `auto/N` takes I from $JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs). */
export function parseShard(v: string | undefined, env: NodeJS.ProcessEnv = process.env): { index: number; count: number } | undefined {
  if (v === undefined) return undefined;
  const m = /^\s*(\d+|auto)\s*\/\s*(\d+)\s*$/.exec(v);
  if (!m) throw new Step1xError(`--shard must be I/N (e.g. 0/4) or auto/N, got "${v}"`, ExitCode.USAGE);
  const count = Number(m[2]);
  let iText = m[1];
  if (iText === 'auto') {
    iText = env.JOB_COMPLETION_INDEX ?? '';
    if (!/^\d+$/.test(iText)) throw new Step1xError(`--shard auto/${m[2]} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) set to an integer, got "${iText}"`, ExitCode.USAGE);
  }
  const index = Number(iText);
  if (!(count >= 1) || !Number.isSafeInteger(count) || index >= count) throw new Step1xError(`--shard ${v}: need 0 <= I < N and N >= 1`, ExitCode.USAGE);
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
  // case-insensitively: a.png and A.PNG are one file on macOS and Windows file systems
  const byOut = new Map<string, BatchEntry[]>();
  for (const e of all) {
    const k = e.output.toLowerCase();
    byOut.set(k, [...(byOut.get(k) ?? []), e]);
  }
  const clashes = [...byOut.values()].filter((v) => v.length > 1);
  if (clashes.length)
    throw new Step1xError(
      `manifest: output names collide, nothing was run: ` +
        clashes.slice(0, 5).map((v) => `${v.map((e) => `"${e.name}"`).join(' and ')} would all write ${basename(v[0].output)}`).join('; ') +
        `${clashes.length > 5 ? '; ...' : ''} (rename the inputs)`,
      ExitCode.USAGE,
    );
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
      o.rep.done(`[${i}/${n}] ${e.name} → ${e.output} (${fmtSeconds(res.timings.total ?? 0)})`);
      o.onRecord?.({ index: e.index, input: e.input, output: e.output, status: 'ok', seed: res.seed, timings_s: res.timings }, res);
    } catch (err) {
      const code: ExitCodeValue = err instanceof Step1xError ? err.code : ExitCode.GPU;
      const msg = (err as Error)?.message ?? String(err);
      const rec: BatchRecord = { index: e.index, input: e.input, output: e.output, status: 'failed', error: msg, exit_code: code };
      out.failed.push(rec);
      o.rep.fail(`[${i}/${n}] ${e.name}: ${msg}`);
      o.onRecord?.(rec);
      if (o.failFast || FATAL.has(code)) throw err;
    }
  }
  return out;
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
      .option('--shard <I/N>', 'run only manifest entries I, I+N, I+2N, ... (auto/N: I = $JOB_COMPLETION_INDEX)')
      .option('--report <file>', 'write one JSON line per entry (input, output, status, error, timings, seed)'),
  ).action(async (manifest: string, o: BatchCliOptions) => {
    installInterruptCleanup();
    const base = requestFromOptions(o);
    await checkOptionsUpFront(o);
    const ext = `.${o.format ?? 'png'}`;
    outputFormatFor(`x${ext}`); // refuses an unknown format
    const shard = parseShard(o.shard);
    const entries = parseManifest(manifest);
    if (!existsSync(o.inputDir) || !statSync(o.inputDir).isDirectory()) throw new Step1xError(`--input-dir ${o.inputDir}: no such directory`, ExitCode.INPUT);
    const plan = planBatch(entries, { inputDir: o.inputDir, outputDir: o.outputDir, ext, shard, skipExisting: o.skipExisting });
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

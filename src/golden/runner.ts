/**
 * The golden runner (`step1x golden <case-dir>`): reads case.json, opens io.safetensors, runs the case's
 * kind (src/golden/kinds), compares every emitted tensor that io.safetensors holds under the case's
 * tolerance list, lists the non-emitted intermediates as skipped and a non-emitted `out.*` as a failure,
 * and optionally dumps everything it computed (not the `in.*` names) to a safetensors file.
 * A case whose io.safetensors holds only `in.*` tensors runs too: nothing is compared, all is dumped.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { Gpu, type GpuOptions } from '../runtime/gpu.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../io/safetensors.js';
import { ExitCode, Step1xError, fail } from '../errors.js';
import { compareTensor, explainRankSwaps, findTolerance, reducedPrecision, type TensorDetail, type TensorResult, type Tolerance } from './compare.js';
import { knownKinds, resolveKind, type EmitKind, type GoldenContext } from './registry.js';
import './kinds/index.js';

export interface GoldenReport {
  case: string;
  kind: string;
  pass: boolean;
  tensors: TensorResult[];
}

export interface GoldenOptions {
  /** Write every computed tensor (not in.*) here. */
  dump?: string;
  /** Use this runtime (tests); otherwise one is created (with `device`) and destroyed. */
  gpu?: Gpu;
  device?: GpuOptions;
  /** Progress lines (default: stderr). */
  log?: (msg: string) => void;
}

export interface GoldenResult {
  report: GoldenReport;
  /** Per-tensor results with notes, in report order. */
  details: TensorDetail[];
  /** Emitted tensors with no reference in io.safetensors. */
  unreferenced: string[];
  /** Everything the kind emitted, by name. */
  emitted: Map<string, Emitted>;
}

export interface Emitted {
  data: Float32Array | Int32Array | Uint8Array;
  shape: number[];
  kind: EmitKind;
}

/** Is this io.safetensors name an input (never compared unless emitted, never dumped)? */
const isInput = (name: string) => name.startsWith('in.');

function readCaseJson(caseDir: string): any {
  const p = join(caseDir, 'case.json');
  if (!existsSync(caseDir)) fail(`golden: ${caseDir}: no such directory`, ExitCode.USAGE);
  if (!existsSync(p)) fail(`golden: ${caseDir}: no case.json (not a golden case directory)`, ExitCode.USAGE);
  let j: any;
  try {
    j = JSON.parse(readFileSync(p, 'utf8'));
  } catch (e) {
    fail(`golden: ${p}: invalid JSON (${(e as Error).message.split('\n')[0]})`, ExitCode.USAGE);
  }
  if (!j || typeof j !== 'object' || typeof j.kind !== 'string') fail(`golden: ${p}: no "kind" string`, ExitCode.USAGE);
  if (j.tolerance !== undefined && !Array.isArray(j.tolerance)) fail(`golden: ${p}: "tolerance" must be a list`, ExitCode.USAGE);
  return j;
}

async function readReference(io: SafetensorsFile, name: string): Promise<ArrayLike<number>> {
  const dt = io.tensors.get(name)!.dtype;
  if (dt === 'U8') return io.readBytes(name);
  if (dt === 'I64' || dt === 'I32' || dt === 'I16' || dt === 'I8' || dt === 'BOOL') return io.readI64AsNumber(name);
  return io.readF32(name);
}

/**
 * One computed tensor against the reference `name` of a case's io file under the case's tolerances (through
 * `contract`: the reduced-precision one for f16-operand kernels). Ranked ids beside their scores (`X_ids` and
 * `X`) may differ by adjacent swaps of scores within tolerance (compare.ts explainRankSwaps).
 */
export async function compareWithReference(
  io: SafetensorsFile, name: string, got: ArrayLike<number>, tolerances: readonly Tolerance[], contract: (t: Tolerance | undefined) => Tolerance | undefined = (t) => t,
  computed?: (name: string) => ArrayLike<number> | undefined,
): Promise<TensorDetail> {
  const ref = await readReference(io, name);
  const d = compareTensor(name, got, ref, contract(findTolerance(tolerances, name)));
  const shape = io.tensors.get(name)!.shape;
  const scores = name.endsWith('_ids') ? name.slice(0, -4) : '';
  if (d.pass || !scores || !io.has(scores) || shape.length === 0) return d;
  return explainRankSwaps(d, got, ref, await readReference(io, scores), shape[shape.length - 1], contract(findTolerance(tolerances, scores)), computed?.(scores));
}

function toWrite(e: Emitted): WriteTensor {
  const n = e.data.length;
  if (e.kind === 'u8') return { dtype: 'U8', shape: e.shape, data: e.data instanceof Uint8Array ? e.data : Uint8Array.from(e.data, (v) => Math.max(0, Math.min(255, Math.round(v)))) };
  if (e.kind === 'i64') {
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) out[i] = BigInt(Math.round(e.data[i]));
    return { dtype: 'I64', shape: e.shape, data: out };
  }
  return { dtype: 'F32', shape: e.shape, data: e.data instanceof Float32Array ? e.data : Float32Array.from(e.data) };
}

/** The io of a tables-only case: no tensors; reading one is a usage error naming the case. */
function noTensors(ioPath: string): SafetensorsFile {
  const none = (n: string): never => fail(`golden: ${ioPath} does not exist (a tables-only case), no tensor "${n}"`, ExitCode.USAGE);
  return { tensors: new Map(), has: () => false, readF32: none, readI32: none, readBytes: none, readI64AsNumber: none, close: async () => {} } as unknown as SafetensorsFile;
}

export async function runGolden(caseDirArg: string, opts: GoldenOptions = {}): Promise<GoldenResult> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const caseDir = resolve(caseDirArg);
  const caseJson = readCaseJson(caseDir);
  const kind: string = caseJson.kind;
  const run = await resolveKind(kind);
  if (!run) fail(`golden: unknown kind "${kind}" in ${join(caseDir, 'case.json')} (known: ${knownKinds().join(', ')})`, ExitCode.USAGE);
  const ioPath = join(caseDir, 'io.safetensors');
  // a case of string tables only (v12_parsers: `tables`, no tensors) has no io.safetensors
  const tablesOnly = !existsSync(ioPath) && caseJson.tables && typeof caseJson.tables === 'object';
  if (!existsSync(ioPath) && !tablesOnly) fail(`golden: ${caseDir}: no io.safetensors`, ExitCode.USAGE);
  const io = tablesOnly ? noTensors(ioPath) : await SafetensorsFile.open(ioPath);
  const tolerances: Tolerance[] = caseJson.tolerance ?? [];
  const caseName: string = typeof caseJson.case === 'string' ? caseJson.case : basename(caseDir);
  const emitted = new Map<string, Emitted>();
  let gpu = opts.gpu;
  const ownGpu = !gpu;
  try {
    if (!gpu) gpu = await Gpu.create(opts.device);
    const ctx: GoldenContext = {
      caseDir, spec: caseJson.spec ?? {}, caseJson, io, gpu,
      input: (n) => {
        if (!io.has(n)) fail(`golden: ${ioPath} has no tensor "${n}" (an input of kind ${kind})`, ExitCode.USAGE);
        return io.readF32(n);
      },
      inputInt: (n) => {
        if (!io.has(n)) fail(`golden: ${ioPath} has no tensor "${n}" (an input of kind ${kind})`, ExitCode.USAGE);
        return io.readI32(n);
      },
      has: (n) => io.has(n),
      emit: (n, data, shape, k) => {
        const ek: EmitKind = k ?? (data instanceof Int32Array ? 'i64' : data instanceof Uint8Array ? 'u8' : 'f32');
        const numel = shape.reduce((a, b) => a * b, 1);
        if (numel !== data.length) fail(`golden: kind ${kind} emitted ${n} with ${data.length} values for shape [${shape}]`, ExitCode.GPU);
        if (emitted.has(n)) log(`  note: ${n} emitted twice; keeping the last`);
        emitted.set(n, { data: data.slice(), shape: [...shape], kind: ek });
      },
      log,
    };
    const t0 = Date.now();
    log(`golden ${caseName} (kind ${kind}): running`);
    await run(ctx);
    log(`golden ${caseName}: computed ${emitted.size} tensors in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const details: TensorDetail[] = [];
    // f16-operand kernels are held to the reduced-precision contract (compare.ts), f32 ones to the case's.
    const contract = gpu.precision === 'mixed' ? reducedPrecision : (t: Tolerance | undefined) => t;
    if (gpu.precision === 'mixed') log(`golden ${caseName}: ${gpu.kernels} kernels at mixed precision: reduced-precision contract (relL2 ≤ 1e-2, u8 ±2 on ≥ 98 %, integers exact)`);
    for (const [name, info] of io.tensors) {
      const e = emitted.get(name);
      if (!e) {
        if (isInput(name)) continue;
        if (name.startsWith('out.')) details.push({ name, maxAbs: null, relL2: null, pass: false, skipped: false, note: 'not computed (every out.* must be)' });
        else details.push({ name, maxAbs: null, relL2: null, pass: true, skipped: true, note: 'not computed by this implementation' });
        continue;
      }
      const refNumel = info.shape.reduce((a, b) => a * b, 1);
      if (refNumel !== e.data.length) {
        details.push({ name, maxAbs: null, relL2: null, pass: false, skipped: false, note: `computed shape [${e.shape}], reference [${info.shape}]` });
        continue;
      }
      details.push(await compareWithReference(io, name, e.data, tolerances, contract, (n) => emitted.get(n)?.data));
    }
    const unreferenced = [...emitted.keys()].filter((n) => !io.has(n));
    if (unreferenced.length) log(`  computed without reference: ${unreferenced.join(', ')}`);

    if (opts.dump) {
      const out: Record<string, WriteTensor> = {};
      for (const [n, e] of emitted) if (!isInput(n)) out[n] = toWrite(e);
      try {
        await writeSafetensors(opts.dump, out, { case: caseName, kind });
      } catch (err) {
        throw new Step1xError(`golden: cannot write --dump ${opts.dump}: ${(err as Error).message}`, ExitCode.OUTPUT);
      }
      log(`  dumped ${Object.keys(out).length} tensors to ${opts.dump}`);
    }
    const tensors: TensorResult[] = details.map(({ name, maxAbs, relL2, pass, skipped }) => ({ name, maxAbs, relL2, pass, skipped }));
    const report: GoldenReport = { case: caseName, kind, pass: details.every((d) => d.pass), tensors };
    return { report, details, unreferenced, emitted };
  } finally {
    await io.close();
    if (ownGpu && gpu) gpu.destroy();
  }
}

/**
 * `step1x inspect <path>`: what is in a checkpoint or an output image, without a GPU.
 *   - safetensors file, sharded directory (or its index.json), or a directory with one .safetensors:
 *     a table of name / dtype / shape / bytes and totals. Reads headers only: instant on a 25 GB file.
 *   - a model directory in the official layout (several checkpoints): one summary line per checkpoint.
 *   - PNG: size, format and the tEXt/zTXt/iTXt chunks (the parameters step1x writes into its outputs).
 * `--json` prints one JSON object instead.
 */
import type { Command } from 'commander';
import { readdir, stat } from 'node:fs/promises';
import { versionOfKeys, type DitVersion } from '../pipeline/official.js';
import { join } from 'node:path';
import { QBLOCK_META_KEY, QUANT_META_KEY } from '../io/quant-layout.js';
import { Checkpoint } from '../io/checkpoint.js';
import { isDiffusersDir, readDiffusersDir } from '../io/diffusers-layout.js';
import { numelOfShape, ST_DTYPE_BYTES } from '../io/safetensors.js';
import { isPngFile, readPngInfo, type PngInfo } from '../io/png-text.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { sanitizeForTerminal } from './sanitize.js';
import { open } from 'node:fs/promises';

interface InspectOptions {
  json?: boolean;
  filter?: string;
}

/** Every line goes through the sanitiser: names and text come from the file. */
const out = (s: string) => process.stdout.write(sanitizeForTerminal(s) + '\n');

let epipeGuard = false;
/** `step1x inspect big.safetensors | head` closes the pipe early: end quietly, not with a stack trace. */
export function exitQuietlyOnEpipe(): void {
  if (epipeGuard) return;
  epipeGuard = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    process.stderr.write(`step1x: error: cannot write to stdout: ${e.code === 'EBADF' ? 'stdout is closed (EBADF)' : e.code ?? e.message}\n`);
    process.exit(ExitCode.OUTPUT);
  });
}
const group = (n: number) => n.toLocaleString('en-US');

export function humanBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}

/** The checkpoint version of a Step1X-Edit DiT file (the weights tell it), undefined for anything else. */
function ditVersionOf(ck: Checkpoint): DitVersion | undefined {
  if (!ck.has('img_in.weight') || !ck.has('connector.global_proj_out.weight')) return undefined;
  return versionOfKeys((n) => ck.has(n));
}

function summarize(ck: Checkpoint, filter?: string) {
  const rows = ck
    .keys()
    .filter((k) => !filter || k.includes(filter))
    .map((name) => {
      const t = ck.info(name);
      const numel = numelOfShape(t.shape);
      const bytes = t.quant ? t.end - t.begin + t.quant.scale.end - t.quant.scale.begin : numel * ST_DTYPE_BYTES[t.dtype];
      return { name, dtype: t.quant ? t.quant.format : t.dtype, shape: t.shape, params: numel, bytes, file: t.file };
    });
  const totals = {
    count: rows.length,
    params: rows.reduce((s, r) => s + r.params, 0),
    bytes: rows.reduce((s, r) => s + r.bytes, 0),
  };
  const byDtype: Record<string, number> = {};
  for (const r of [...rows].sort((a, b) => (a.dtype < b.dtype ? -1 : a.dtype > b.dtype ? 1 : 0))) byDtype[r.dtype] = (byDtype[r.dtype] ?? 0) + r.params;
  const files = ck.files.map((f) => ({ path: f.path, size: f.fileSize, tensors: f.tensors.size, metadata: f.metadata }));
  return { rows, totals, byDtype, files };
}

/** q8 / q4 / fp8 from `step1x convert` metadata, fp8 when F8 tensors are present, else "as stored". */
function weightsFormat(ck: Checkpoint): string {
  const f = ck.files.map((x) => x.metadata[QUANT_META_KEY]).find((x) => x);
  if (f) return `${f} (step1x convert${f !== 'fp8' ? `, blocks of ${ck.files[0].metadata[QBLOCK_META_KEY] ?? '32'}` : ''})`;
  const dts = new Set(ck.keys().map((k) => ck.info(k).dtype));
  if (dts.has('F8_E4M3') || dts.has('F8_E5M2')) return `fp8 (${[...dts].sort().join(' + ')})`;
  return [...dts].sort().join(' + ') || 'none';
}

const fmtDtypes = (byDtype: Record<string, number>) =>
  Object.entries(byDtype)
    .map(([d, n]) => `${d} ${group(n)}`)
    .join(', ');

export async function inspectCheckpoint(path: string, opts: InspectOptions): Promise<void> {
  const ck = await Checkpoint.open(path);
  try {
    const { rows, totals, byDtype, files } = summarize(ck, opts.filter);
    if (opts.json) {
      out(JSON.stringify({ kind: 'safetensors', path, weightsFormat: weightsFormat(ck), files, metadata: ck.metadata, ...(ditVersionOf(ck) ? { dit_version: ditVersionOf(ck) } : {}), tensors: rows, totals, paramsByDtype: byDtype }, null, 1));
      return;
    }
    const dv = ditVersionOf(ck);
    out(`${path}: ${ck.files.length === 1 ? 'safetensors file' : `sharded checkpoint, ${ck.files.length} files`}${dv ? `, Step1X-Edit DiT ${dv} (${dv === 'v1.0' ? 'has' : 'no'} connector.scale_factor)` : ''}, weights ${weightsFormat(ck)}`);
    for (const f of files)
      out(`  ${f.path}  ${humanBytes(f.size)}, ${f.tensors} tensors${Object.keys(f.metadata).length ? `, metadata ${JSON.stringify(f.metadata)}` : ''}`);
    const wName = Math.max(4, ...rows.map((r) => r.name.length));
    const wShape = Math.max(5, ...rows.map((r) => fmtShape(r.shape).length));
    const wBytes = Math.max(5, ...rows.map((r) => group(r.bytes).length));
    out('');
    out(`${'name'.padEnd(wName)}  ${'dtype'.padEnd(7)} ${'shape'.padEnd(wShape)}  ${'bytes'.padStart(wBytes)}`);
    for (const r of rows) out(`${r.name.padEnd(wName)}  ${r.dtype.padEnd(7)} ${fmtShape(r.shape).padEnd(wShape)}  ${group(r.bytes).padStart(wBytes)}`);
    out('');
    const dt = fmtDtypes(byDtype);
    out(
      `total${opts.filter ? ` (matching "${opts.filter}")` : ''}: ${group(totals.count)} tensors, ${group(totals.params)} parameters${dt ? ` (${dt})` : ''}, ` +
        `${group(totals.bytes)} bytes (${humanBytes(totals.bytes)})`,
    );
  } finally {
    await ck.close();
  }
}

const COLOR_TYPES: Record<number, string> = { 0: 'grayscale', 2: 'RGB', 3: 'palette', 4: 'grayscale+alpha', 6: 'RGBA' };

export async function inspectPng(path: string, opts: InspectOptions): Promise<PngInfo> {
  const info = await readPngInfo(path);
  if (opts.json) {
    out(JSON.stringify({ kind: 'png', path, ...info }, null, 1));
    return info;
  }
  out(
    `${path}: PNG ${info.width}x${info.height}, ${info.bitDepth}-bit ${COLOR_TYPES[info.colorType] ?? `color type ${info.colorType}`}` +
      `${info.interlaced ? ', interlaced' : ''}, ${group(info.fileSize)} bytes`,
  );
  out(`chunks: ${info.chunks.join(' ')}`);
  if (!info.text.length) out('no text chunks');
  for (const t of info.text) {
    const lines = t.text.split('\n');
    out(`${t.keyword} (${t.type}): ${lines[0]}`);
    for (const l of lines.slice(1)) out(`  ${l}`);
  }
  return info;
}

export async function inspectPath(path: string, opts: InspectOptions): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new Step1xError(`inspect: ${path}: no such file or directory`, ExitCode.INPUT);
  }
  if (st.isFile() && (await isPngFile(path))) {
    await inspectPng(path, opts);
    return;
  }
  if (st.isFile()) {
    // by content first; the extension only says what the user expected
    const kind = sniffImage(await readHead(path));
    if (kind || /\.(jpe?g|webp|gif|bmp|tiff?|avif)$/i.test(path))
      throw new Step1xError(`inspect: ${path}: ${kind ? `a ${kind} image; ` : ''}only PNG images carry step1x parameters; nothing to show`, ExitCode.INPUT);
    if (/\.png$/i.test(path))
      throw new Step1xError(`inspect: ${path}: not a PNG file (${st.size === 0 ? 'empty file, 0 bytes' : 'no PNG signature'})`, ExitCode.INPUT);
  }
  if (st.isDirectory() && isDiffusersDir(path)) return inspectDiffusersDir(path, opts);
  if (st.isDirectory()) {
    const parts = await modelDirParts(path);
    if (parts.length > 1) return inspectModelDir(path, parts, opts);
  }
  await inspectCheckpoint(path, opts);
}

async function readHead(path: string): Promise<Uint8Array> {
  try {
    const fh = await open(path, 'r');
    try {
      const b = new Uint8Array(16);
      const { bytesRead } = await fh.read(b, 0, 16, 0);
      return b.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch {
    return new Uint8Array(0);
  }
}

/** Image formats recognised by their first bytes (PNG is handled before). */
function sniffImage(h: Uint8Array): string | undefined {
  const ascii = (a: number, b: number) => String.fromCharCode(...h.subarray(a, b));
  if (h[0] === 0xff && h[1] === 0xd8 && h[2] === 0xff) return 'JPEG';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'WebP';
  if (ascii(0, 4) === 'GIF8') return 'GIF';
  if (ascii(0, 2) === 'BM') return 'BMP';
  if (ascii(0, 4) === 'II*\0' || ascii(0, 4) === 'MM\0*') return 'TIFF';
  if (ascii(4, 12) === 'ftypavif') return 'AVIF';
  return undefined;
}

/**
 * The checkpoints of a model directory in the official layout (DiT file, vae.safetensors,
 * Qwen2.5-VL-7B-Instruct/ sharded): its .safetensors files and its subdirectories holding a
 * *.safetensors.index.json. Empty when the directory is itself one checkpoint (has an index).
 */
async function modelDirParts(dir: string): Promise<string[]> {
  // Hugging Face cache snapshots hold symlinks: classify entries by what they point to.
  const kinds = await Promise.all(
    (await readdir(dir)).map(async (name) => {
      const s = await stat(join(dir, name)).catch(() => null);
      return { name, file: !!s?.isFile(), dir: !!s?.isDirectory() };
    }),
  );
  if (kinds.some((e) => e.file && e.name.endsWith('.safetensors.index.json'))) return [];
  const parts = kinds.filter((e) => e.file && e.name.endsWith('.safetensors')).map((e) => join(dir, e.name));
  for (const e of kinds.filter((x) => x.dir)) {
    const sub = await readdir(join(dir, e.name)).catch(() => [] as string[]);
    if (sub.some((n) => n.endsWith('.safetensors.index.json'))) parts.push(join(dir, e.name));
  }
  return parts.sort();
}

/** A diffusers-layout directory (model_index.json): its version and layout, then one line per weight component. */
async function inspectDiffusersDir(dir: string, opts: InspectOptions): Promise<void> {
  const d = readDiffusersDir(dir); // names every missing file (exit 4)
  const layout = { layout: 'diffusers', version: d.version, pipeline: d.pipelineClass };
  if (!opts.json) out(`${dir}: model directory, diffusers layout, Step1X-Edit ${d.version} (${d.pipelineClass})`);
  await inspectModelDir(dir, [d.transformerDir, d.textEncoderDir, d.vaeDir], opts, layout);
}

/** One summary line per checkpoint of a model directory (headers only). */
async function inspectModelDir(dir: string, parts: string[], opts: InspectOptions, layout: Record<string, string> = { layout: 'official' }): Promise<void> {
  const items = [];
  for (const p of parts) {
    const ck = await Checkpoint.open(p);
    try {
      const { totals, byDtype, files } = summarize(ck, opts.filter);
      items.push({ path: p, files: files.length, totals, paramsByDtype: byDtype, ...(ditVersionOf(ck) ? { dit_version: ditVersionOf(ck) } : {}) });
    } finally {
      await ck.close();
    }
  }
  if (opts.json) {
    out(JSON.stringify({ kind: 'directory', path: dir, ...layout, checkpoints: items }, null, 1));
    return;
  }
  if (layout.layout === 'official') out(`${dir}: model directory, official layout, ${items.length} checkpoints`);
  const w = Math.max(...items.map((i) => i.path.length));
  for (const i of items)
    out(
      `  ${i.path.padEnd(w)}  ${i.dit_version ? `Step1X-Edit DiT ${i.dit_version}, ` : ''}${i.files > 1 ? `${i.files} shards, ` : ''}${group(i.totals.count)} tensors, ` +
        `${group(i.totals.params)} parameters (${fmtDtypes(i.paramsByDtype)}), ${humanBytes(i.totals.bytes)}`,
    );
  const dits = items.filter((i) => i.dit_version);
  if (dits.length && layout.layout === 'official') {
    const used = dits.find((i) => i.dit_version === 'v1.1') ?? dits[0];
    out(`checkpoint version: ${used.dit_version}${dits.length > 1 ? ` (${dits.map((i) => i.dit_version).join(' and ')} present; edit uses v1.1 unless --version v1.0)` : ''}`);
  }
  const all = items.reduce((s, i) => s + i.totals.params, 0);
  out(`total: ${group(all)} parameters, ${humanBytes(items.reduce((s, i) => s + i.totals.bytes, 0))}; run "step1x inspect <checkpoint>" for its tensors`);
}

export function register(program: Command): void {
  program
    .command('inspect')
    .description('show the tensors of a safetensors file / sharded checkpoint directory, or the size and text chunks of a PNG')
    .argument('<path>', '.safetensors file, checkpoint directory (sharded with *.safetensors.index.json), or .png')
    .option('--json', 'print JSON instead of a table')
    .option('--filter <text>', 'only tensors whose name contains this text')
    .action(async (path: string, opts: InspectOptions) => {
      exitQuietlyOnEpipe();
      await inspectPath(path, opts);
    });
}

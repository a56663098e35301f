/**
 * Golden kind `v12_e2e` (v12_e2e_tiny): a whole Step1X-Edit v1.2 edit (pipeline/v12-edit.ts, the fork's
 * Step1XEditPipelineV1P2, thinking and reflection off) from the case's diffusers-layout `model/` (the
 * `spec.shared_files` taken from the sibling cases, sha256 checked, when the copy does not hold them),
 * `in.photo_u8`, `in.sample_eps`, `in.noise`, `in.pixel_values_row_index` and `spec.prompt / size_level /
 * num_steps / cfg / processor_pixels`; then again with the slow image processor (mid.alt_slow_processor.*):
 *   photo → LANCZOS to the size level (mid.ref_resized_u8) → torch uint8 bicubic AA to smart_resize
 *   (mid.qwen_resized_u8) → pixel values → Qwen2.5-VL (no attention mask, M-RoPE from ids > 0) for the
 *   prompt and "" → kept span, text embeddings, txt_ids; photo → bilinear AA → VAE posterior sampled with
 *   in.sample_eps; FlowMatch schedule, CFG at every step; decode, round, PIL bicubic back to the photo size.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { GoldenContext } from '../registry.js';
import { ExitCode, fail } from '../../errors.js';
import type { RgbImage } from '../../io/resize.js';
import { readDiffusersDir } from '../../io/diffusers-layout.js';
import { runV12Edit } from '../../pipeline/v12-edit.js';

function sha256(path: string): string {
  const raw = readFileSync(path);
  return createHash('sha256').update(path.endsWith('.gz') ? gunzipSync(raw) : raw).digest('hex');
}

/** The case's model directory, or a temporary one with the shared files linked in (sha256 checked). */
export function assembleModel(caseDir: string, spec: any): { dir: string; cleanup: () => void } {
  const model = join(caseDir, spec.model_dir ?? 'model');
  const shared = (spec.shared_files ?? []) as { from: string; to: string; sha256: string }[];
  const present = (p: string) => [p, `${p}.gz`].find((q) => existsSync(q));
  if (shared.every((s) => present(join(caseDir, s.to)))) return { dir: model, cleanup: () => undefined };
  const root = mkdtempSync(join(tmpdir(), 'step1x-v12-model-'));
  const tmpModel = join(root, 'model');
  const link = (src: string, dst: string) => {
    if (statSync(src).isDirectory()) {
      mkdirSync(dst, { recursive: true });
      for (const e of readdirSync(src)) link(join(src, e), join(dst, e));
    } else symlinkSync(resolve(src), dst);
  };
  link(model, tmpModel);
  for (const s of shared) {
    const src = present(join(dirname(resolve(caseDir)), s.from));
    if (!src) fail(`${caseDir}: spec.shared_files: ${s.from} not found beside the case (copy the shared cases it names)`, ExitCode.WEIGHTS);
    if (sha256(src) !== s.sha256) fail(`${src}: sha256 differs from spec.shared_files (${s.sha256})`, ExitCode.WEIGHTS);
    const dst = join(root, s.to + (src.endsWith('.gz') && !s.to.endsWith('.gz') ? '.gz' : ''));
    if (!existsSync(dst)) symlinkSync(resolve(src), dst);
  }
  return { dir: tmpModel, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/**
 * The model of `spec.model_from` (a v12_e2e case beside this one, relative to its parent folder): that case's
 * model directory with ITS `spec.shared_files` applied.
 */
export function modelFrom(ctx: GoldenContext): { dir: string; cleanup: () => void } {
  const from = ctx.spec?.model_from;
  if (typeof from !== 'string') fail(`${ctx.caseDir}: spec.model_from is missing`, ExitCode.USAGE);
  const caseDir = resolve(dirname(resolve(ctx.caseDir)), from);
  const cj = join(caseDir, 'case.json');
  if (!existsSync(cj)) fail(`${ctx.caseDir}: spec.model_from: ${cj} not found (copy the case it names beside this one)`, ExitCode.WEIGHTS);
  let spec: any;
  try {
    spec = JSON.parse(readFileSync(cj, 'utf8')).spec ?? {};
  } catch (e) {
    fail(`${cj}: invalid JSON (${(e as Error).message.split('\n')[0]})`, ExitCode.USAGE);
  }
  return assembleModel(caseDir, spec);
}

export async function photoOf(ctx: GoldenContext): Promise<RgbImage> {
  const info = ctx.io.tensors.get('in.photo_u8');
  if (!info || info.shape.length !== 3 || info.shape[2] !== 3) fail(`${ctx.caseDir}: in.photo_u8 must be [H, W, 3]`, ExitCode.USAGE);
  return { height: info.shape[0], width: info.shape[1], data: await ctx.io.readBytes('in.photo_u8') };
}

export async function run(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec ?? {}, g = ctx.gpu;
  const { dir, cleanup } = assembleModel(ctx.caseDir, spec);
  try {
    const d = readDiffusersDir(dir);
    if (d.version !== 'v1.2') fail(`${dir}: a ${d.version} model; the v12_e2e kind runs v1.2`, ExitCode.WEIGHTS);
    const photo = await photoOf(ctx);
    const o = {
      prompt: spec.prompt, sizeLevel: spec.size_level, steps: spec.num_steps, cfg: spec.cfg, processorPixels: spec.processor_pixels,
      noise: await ctx.input('in.noise'), refEps: await ctx.input('in.sample_eps'),
    };
    const rowsIdx = await ctx.inputInt('in.pixel_values_row_index');
    const rowsOf = (pv: Float32Array) => {
      const rows = new Float32Array(rowsIdx.length * 1176);
      rowsIdx.forEach((r, i) => {
        if (r < 0 || (r + 1) * 1176 > pv.length) fail(`in.pixel_values_row_index[${i}] = ${r} is outside the ${pv.length / 1176} rows`, ExitCode.USAGE);
        rows.set(pv.subarray(r * 1176, (r + 1) * 1176), i * 1176);
      });
      return rows;
    };
    const pixels = (prefix: string, pv: Float32Array) => {
      ctx.emit(`${prefix}pixel_values_rows`, rowsOf(pv), [rowsIdx.length, 1176]);
      ctx.emit(`${prefix}pixel_values_sum`, Float32Array.of(pv.reduce((a, v) => a + v, 0)), [1]);
    };
    await runV12Edit(ctx.gpu, d, photo, o, (n, data, shape, kind) => (n === 'mid.pixel_values' ? pixels('mid.', data as Float32Array) : ctx.emit(n, data, shape, kind)));
    // the slow (PIL) image processor's run, recorded by the case as mid.alt_slow_processor.* (NOT the reference)
    const alt: Record<string, string> = { 'out.rgb_small_u8': 'mid.alt_slow_processor.rgb_small_u8', 'out.rgb_u8': 'mid.alt_slow_processor.rgb_u8' };
    await runV12Edit(ctx.gpu, d, photo, { ...o, slowProcessor: true }, (n, data, shape, kind) =>
      n === 'mid.pixel_values' ? pixels('mid.alt_slow_processor.', data as Float32Array) : alt[n] ? ctx.emit(alt[n], data, shape, kind) : undefined);
  } finally {
    cleanup();
  }
}

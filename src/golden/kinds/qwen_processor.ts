/**
 * Golden kind `qwen_processor`: Step1X's Qwen2.5-VL image path on each `spec.entries[i]` image.
 * Consumes `in.<e>.image_u8` [H, W, 3] (and `in.<e>.pixel_values_row_index` where present), the
 * processor / fetch_image settings in `spec`. Emits `mid.<e>.roundtrip_u8`, `mid.<e>.fetched_u8`,
 * `mid.<e>.resized_u8`, `out.<e>.pixel_values` (or `out.<e>.pixel_values_rows`) and
 * `out.<e>.image_grid_thw` [1, 3].
 */
import { fail, fmtShape, ExitCode } from '../../errors.js';
import type { RgbImage } from '../../io/resize.js';
import { qwenProcessImage, type QwenProcessorOptions } from '../../models/qwen25vl/processor.js';

/** The part of the runner's GoldenContext (src/golden/registry.ts) this kind uses. */
export interface FrontEndGoldenContext {
  caseDir: string;
  spec: any;
  io: { tensors: Map<string, { shape: number[] }>; readBytes(name: string): Promise<Uint8Array> };
  inputInt(name: string): Promise<Int32Array>;
  has(name: string): boolean;
  emit(name: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind?: 'f32' | 'i64' | 'u8'): void;
  log(msg: string): void;
}

export async function readU8Image(ctx: FrontEndGoldenContext, name: string): Promise<RgbImage> {
  const info = ctx.io.tensors.get(name);
  if (!info) fail(`${ctx.caseDir}: io.safetensors has no tensor ${name}`, ExitCode.USAGE);
  if (info.shape.length !== 3 || info.shape[2] !== 3)
    fail(`${ctx.caseDir}: ${name} has shape ${fmtShape(info.shape)}, expected [H,W,3]`, ExitCode.USAGE);
  return { height: info.shape[0], width: info.shape[1], data: await ctx.io.readBytes(name) };
}

export function emitU8(ctx: FrontEndGoldenContext, name: string, img: RgbImage): void {
  ctx.emit(name, img.data, [img.height, img.width, 3], 'u8');
}

export function processorOptions(spec: any): QwenProcessorOptions {
  const ip = spec?.image_processor ?? spec?.processor ?? {};
  const fe = spec?.fetch_image ?? {};
  return {
    minPixels: ip.min_pixels, maxPixels: ip.max_pixels,
    fetchMinPixels: fe.min_pixels, fetchMaxPixels: fe.max_pixels,
    rescaleFactor: ip.rescale_factor, mean: ip.image_mean, std: ip.image_std,
    roundtrip: spec?.to_pil_roundtrip !== false,
  };
}

export async function run(ctx: FrontEndGoldenContext): Promise<void> {
  const entries: string[] = ctx.spec?.entries;
  if (!Array.isArray(entries) || entries.length === 0) fail(`${ctx.caseDir}: spec.entries must list the images`, ExitCode.USAGE);
  const opts = processorOptions(ctx.spec);
  for (const e of entries) {
    const img = await readU8Image(ctx, `in.${e}.image_u8`);
    const p = qwenProcessImage(img, opts);
    // every stage is emitted (the case stores roundtrip_u8 / resized_u8 only where they differ from the previous image)
    emitU8(ctx, `mid.${e}.roundtrip_u8`, p.roundtrip);
    emitU8(ctx, `mid.${e}.fetched_u8`, p.fetched);
    emitU8(ctx, `mid.${e}.resized_u8`, p.resized);
    const rowLen = p.pixelValues.length / p.numPatches;
    const rowsName = `in.${e}.pixel_values_row_index`;
    if (ctx.has(rowsName)) {
      const rows = await ctx.inputInt(rowsName);
      const out = new Float32Array(rows.length * rowLen);
      rows.forEach((r, i) => {
        if (r < 0 || r >= p.numPatches) fail(`${rowsName}[${i}] = ${r} is outside [0, ${p.numPatches})`, ExitCode.USAGE);
        out.set(p.pixelValues.subarray(r * rowLen, (r + 1) * rowLen), i * rowLen);
      });
      ctx.emit(`out.${e}.pixel_values_rows`, out, [rows.length, rowLen]);
    } else ctx.emit(`out.${e}.pixel_values`, p.pixelValues, [p.numPatches, rowLen]);
    ctx.emit(`out.${e}.image_grid_thw`, Int32Array.from(p.gridThw), [1, 3], 'i64');
    ctx.log(`${e}: ${img.width}x${img.height} → fetched ${p.fetched.width}x${p.fetched.height} → ${p.resized.width}x${p.resized.height}, grid ${fmtShape(p.gridThw)}`);
  }
}

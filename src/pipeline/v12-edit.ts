/**
 * The Step1X-Edit v1.2 edit (the fork's Step1XEditPipelineV1P2.__call__, thinking and reflection off; rule by
 * rule in ../shared/golden/README.md "Generator version 3", pinned by v12_e2e_tiny):
 *   photo → LANCZOS to the size level → torch uint8 bicubic AA to smart_resize (Qwen2VLImageProcessorFast)
 *   → pixel values (rescale and normalize fused) → Qwen2.5-VL without attention mask (M-RoPE from ids > 0)
 *   for the prompt and "" → kept span (90 dropped), text embeddings, txt_ids; photo → bilinear AA → VAE
 *   posterior sampled with ε; FlowMatch schedule, CFG at every step; decode, round, PIL bicubic back.
 * `emit` receives every intermediate under the golden names (and 'mid.pixel_values', all rows).
 */
import type { Gpu } from '../runtime/gpu.js';
import { ExitCode, fail } from '../errors.js';
import { resize, type RgbImage } from '../io/resize.js';
import { resizeTorchU8 } from '../io/resize-torch.js';
import type { DiffusersModelDir } from '../io/diffusers-layout.js';
import { QwenTokenizer } from '../models/qwen25vl/tokenizer.js';
import { buildV12InputIds } from '../models/qwen25vl/prompt-v12.js';
import { CLIP_MEAN, CLIP_STD, inputProcessSize, patchify, smartResize } from '../models/qwen25vl/processor.js';
import { pack2x2Host, unpack2x2Host } from './prepare.js';
import { initialNoise, posteriorEps } from './rng.js';
import { ModelHost } from './model-host.js';
import { v12Decode, v12Denoise as v12DenoiseStage, v12Embed, v12Encode, type V12Emit, type V12StageOptions } from './v12-stages.js';
export { V12_DEFAULTS } from './v12-sampling.js';
export type { V12Emit, V12StageOptions } from './v12-stages.js';

export interface V12EditOptions {
  prompt: string;
  sizeLevel: number;
  steps: number;
  cfg: number;
  /** initial noise [1, 16, h/8, w/8]; default initialNoise(seed) */
  noise?: Float32Array;
  /** ε of the sampled reference latent [1, 16, h/8, w/8]; default posteriorEps(seed) */
  refEps?: Float32Array;
  seed?: number;
  processorPixels?: { min_pixels?: number; max_pixels?: number };
  /** the slow (PIL bicubic) image processor instead of the fast one: what the case records as NOT the reference */
  slowProcessor?: boolean;
  /** How the stages get their models and budgets (the plan's, from EditPipeline), weights, LoRA, TeaCache, mask. */
  run?: V12StageOptions;
}

const emitU8 = (emit: V12Emit, name: string, img: RgbImage) => emit(name, img.data, [img.height, img.width, 3], 'u8');

/**
 * The v1.2 edit through the stages embed → encode → sample → decode (pipeline/v12-stages.ts), each taking
 * its model from `o.run.models` under the plan's budget like the v1.0/v1.1 stages. Returns the working-size
 * image and the image resized back to the photo.
 */
export async function runV12Edit(g: Gpu, d: DiffusersModelDir, photo: RgbImage, o: V12EditOptions, trace?: V12Emit): Promise<{ small: RgbImage; image: RgbImage }> {
  if (d.version !== 'v1.2') fail(`${d.root}: a ${d.version} model; the v1.2 edit needs a v1.2 model`, ExitCode.WEIGHTS);
  const emit: V12Emit = trace ?? (() => undefined);
  const run: V12StageOptions = { ...o.run, models: o.run?.models ?? new ModelHost() };
  // ---- images
  const [w, h] = inputProcessSize(photo.width, photo.height, o.sizeLevel);
  const ref = resize(photo, w, h, 'lanczos');
  emitU8(emit, 'mid.ref_resized_u8', ref);
  const px = o.processorPixels ?? {};
  const [rh, rw] = smartResize(ref.height, ref.width, 28, px.min_pixels, px.max_pixels, 'processor');
  const qimg = resizeTorchU8(ref, rw, rh, 'bicubic');
  emitU8(emit, 'mid.qwen_resized_u8', qimg);
  // the fast processor fuses rescale and normalize: (x − 255·mean) / (255·std) in f32
  const fast = patchify(qimg, 1, CLIP_MEAN.map((m) => Math.fround(m * 255)), CLIP_STD.map((s) => Math.fround(s * 255)));
  const gridThw = fast.gridThw;
  emit('mid.image_grid_thw', Int32Array.from(gridThw), [1, 3], 'i64');
  // the slow (PIL) processor's pixel values: the case records its outputs as mid.alt_slow_processor.* (NOT the reference)
  const pv = o.slowProcessor ? patchify(resize(ref, rw, rh, 'bicubic')).pixelValues : fast.pixelValues;
  emit('mid.pixel_values', pv, [pv.length / 1176, 1176]);
  const tok = QwenTokenizer.load(d.tokenizerDir);
  const prompts = { cond: buildV12InputIds(tok, o.prompt, (gridThw[1] * gridThw[2]) / 4), uncond: buildV12InputIds(tok, '', (gridThw[1] * gridThw[2]) / 4) };

  // ---- embed: Qwen2.5-VL for the prompt and the negative prompt ""
  await run.onStage?.('embed');
  const sides = await v12Embed(g, d, prompts, pv, gridThw as [number, number, number], [ref.width, ref.height], [rw, rh], run, trace);

  // ---- encode: bilinear AA of the ORIGINAL photo, posterior sampled with ε
  await run.onStage?.('encode');
  const lh = h / 8, lw = w / 8, C = 16; // the FLUX VAE's latent channels (the DiT's 64 packed = 4 · 16)
  const refLatent = await v12Encode(g, d, photo, w, h, o.refEps ?? posteriorEps(o.seed ?? 0, lh, lw, C), run, trace);
  if (refLatent.length !== C * lh * lw) fail(`${d.vaeDir}: the VAE gives ${refLatent.length / (lh * lw)} latent channels, the v1.2 edit needs ${C}`, ExitCode.WEIGHTS);
  const refPacked = pack2x2Host(refLatent, [1, C, lh, lw]), noise = pack2x2Host(o.noise ?? initialNoise(o.seed ?? 0, lh, lw, C), [1, C, lh, lw]);
  const N = (lh / 2) * (lw / 2);
  emit('mid.ref_latent_packed', refPacked, [1, N, 4 * C]);
  emit('mid.noise_packed', noise, [1, N, 4 * C]);

  // ---- sample
  await run.onStage?.('sample');
  const packed = await v12DenoiseStage(g, d, { sides, refPacked, noise, lh, lw, steps: o.steps, cfg: o.cfg }, run, trace);
  const latent = unpack2x2Host(packed, 1, C, lh / 2, lw / 2);

  // ---- decode: latents / scaling + shift, then round(255 · clamp(x/2 + 0.5)) and PIL bicubic back
  await run.onStage?.('decode');
  const small = await v12Decode(g, d, latent, lh, lw, run, trace);
  emitU8(emit, 'out.rgb_small_u8', small);
  g.mark('postprocess');
  const image = resize(small, photo.width, photo.height, 'bicubic');
  emitU8(emit, 'out.rgb_u8', image);
  return { small, image };
}

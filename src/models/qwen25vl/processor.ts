/**
 * The Qwen2.5-VL image path exactly as Step1X-Edit's embedder runs it (golden README "Quirks"):
 *
 *   ref image u8 [H, W, 3] (the output of `inputProcessImage`)
 *   → torchvision to_tensor (f32 x/255) → ToPILImage (mul(255).byte(): truncation)     = roundtrip
 *   → qwen_vl_utils 0.0.10 fetch_image: smart_resize(factor 28, min 4·28², max 16384·28²),
 *     PIL BICUBIC                                                                        = fetched
 *   → Qwen2VLImageProcessor(min 256·28², max 324·28²): smart_resize again, PIL BICUBIC  = resized
 *   → x = f32(u8 · (1/255) in f64); (x − mean) / std in f32 (OpenAI CLIP mean/std)
 *   → CHW, frame repeated twice (temporal patch 2), patches laid out
 *     (gt, gh/2, gw/2, 2, 2, C, 2, 14, 14) → pixel_values [gt·gh·gw, 1176], grid (1, gh, gw).
 */
import { Step1xError, ExitCode } from '../../errors.js';
import { resize, type ResampleFilter, type RgbImage } from '../../io/resize.js';

export const QWEN_PATCH = 14;
export const QWEN_MERGE = 2;
export const QWEN_TEMPORAL = 2;
export const QWEN_FACTOR = QWEN_PATCH * QWEN_MERGE; // 28
export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;
/** qwen_vl_utils defaults used by fetch_image */
export const FETCH_MIN_PIXELS = 4 * 28 * 28;
export const FETCH_MAX_PIXELS = 16384 * 28 * 28;
/** Step1X loads the processor with these (overriding preprocessor_config.json) */
export const STEP1X_MIN_PIXELS = 256 * 28 * 28;
export const STEP1X_MAX_PIXELS = 324 * 28 * 28;
const MAX_RATIO = 200;

/** Python 3 `round()`: round half to even. */
export function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * smart_resize as in qwen_vl_utils 0.0.10 (`variant: 'fetch'`, `max(factor, round_by_factor(..))`)
 * and transformers 4.57 Qwen2VLImageProcessor (`variant: 'processor'`, max(factor, floor) only in the
 * shrink branch). Returns [h, w], both multiples of `factor`.
 */
export function smartResize(
  height: number,
  width: number,
  factor = QWEN_FACTOR,
  minPixels = STEP1X_MIN_PIXELS,
  maxPixels = STEP1X_MAX_PIXELS,
  variant: 'fetch' | 'processor' = 'processor',
): [number, number] {
  if (!(height > 0 && width > 0))
    throw new Step1xError(`smartResize: image size ${width}x${height} must be positive`, ExitCode.INPUT);
  if (Math.max(height, width) / Math.min(height, width) > MAX_RATIO)
    throw new Step1xError(
      `smartResize: aspect ratio of ${width}x${height} exceeds ${MAX_RATIO}:1 (Qwen2-VL limit)`,
      ExitCode.INPUT,
    );
  let hBar = pyRound(height / factor) * factor;
  let wBar = pyRound(width / factor) * factor;
  if (variant === 'fetch') {
    hBar = Math.max(factor, hBar);
    wBar = Math.max(factor, wBar);
  }
  if (hBar * wBar > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    hBar = Math.floor(height / beta / factor) * factor;
    wBar = Math.floor(width / beta / factor) * factor;
    if (variant === 'processor') {
      hBar = Math.max(factor, hBar);
      wBar = Math.max(factor, wBar);
    }
  } else if (hBar * wBar < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    hBar = Math.ceil((height * beta) / factor) * factor;
    wBar = Math.ceil((width * beta) / factor) * factor;
  }
  return [hBar, wBar];
}

/** to_tensor (f32 x/255) then ToPILImage (f32 ·255, truncated to u8): a per-value table. */
const ROUNDTRIP_LUT = (() => {
  const t = new Uint8Array(256);
  for (let v = 0; v < 256; v++) t[v] = Math.trunc(Math.fround(Math.fround(v / 255) * 255));
  return t;
})();

export function toTensorToPilRoundtrip(img: RgbImage): RgbImage {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = ROUNDTRIP_LUT[img.data[i]];
  return { width: img.width, height: img.height, data: out };
}

export interface QwenProcessorOptions {
  minPixels?: number; // processor min_pixels (Step1X: 256·28²)
  maxPixels?: number; // processor max_pixels (Step1X: 324·28²)
  fetchMinPixels?: number;
  fetchMaxPixels?: number;
  /** apply the to_tensor → ToPILImage round trip first (Step1X does); default true */
  roundtrip?: boolean;
  rescaleFactor?: number;
  mean?: readonly number[];
  std?: readonly number[];
}

export interface QwenProcessed {
  /** [N, 1176] f32, N = gt·gh·gw */
  pixelValues: Float32Array;
  numPatches: number;
  /** (t, h, w) in 14-px patches */
  gridThw: [number, number, number];
  /** number of merged vision tokens = t·h·w / 4 (the `<|image_pad|>` count) */
  numImageTokens: number;
  /** intermediates (for goldens / debugging) */
  roundtrip: RgbImage;
  fetched: RgbImage;
  resized: RgbImage;
}

/** Normalise and patchify an image whose sides are multiples of 28. */
export function patchify(
  img: RgbImage,
  rescaleFactor = 1 / 255,
  mean: readonly number[] = CLIP_MEAN,
  std: readonly number[] = CLIP_STD,
): { pixelValues: Float32Array; gridThw: [number, number, number] } {
  const { width: W, height: H, data } = img;
  if (H % QWEN_FACTOR || W % QWEN_FACTOR)
    throw new Step1xError(`patchify: image ${W}x${H} is not a multiple of ${QWEN_FACTOR}`, ExitCode.USAGE);
  const P = QWEN_PATCH, M = QWEN_MERGE, T = QWEN_TEMPORAL, C = 3;
  const gh = H / P, gw = W / P;
  // per-channel u8 → normalised f32 table: f32(u8·scale in f64), then (x − mean)/std in f32
  const lut = new Float32Array(C * 256);
  for (let c = 0; c < C; c++) {
    const m = Math.fround(mean[c]), s = Math.fround(std[c]);
    for (let v = 0; v < 256; v++) lut[c * 256 + v] = Math.fround(Math.fround(Math.fround(v * rescaleFactor) - m) / s);
  }
  const rowLen = C * T * P * P; // 1176
  const N = gh * gw;
  const out = new Float32Array(N * rowLen);
  let row = 0;
  for (let bh = 0; bh < gh / M; bh++)
    for (let bw = 0; bw < gw / M; bw++)
      for (let mh = 0; mh < M; mh++)
        for (let mw = 0; mw < M; mw++, row++) {
          const y0 = (bh * M + mh) * P, x0 = (bw * M + mw) * P;
          const base = row * rowLen;
          for (let c = 0; c < C; c++)
            for (let t = 0; t < T; t++) // both temporal frames are the same image
              for (let py = 0; py < P; py++) {
                const o = base + ((c * T + t) * P + py) * P;
                const src = ((y0 + py) * W + x0) * C + c;
                for (let px = 0; px < P; px++) out[o + px] = lut[c * 256 + data[src + px * C]];
              }
        }
  return { pixelValues: out, gridThw: [1, gh, gw] };
}

/** The whole Step1X → Qwen image path (see file header). */
export function qwenProcessImage(img: RgbImage, opts: QwenProcessorOptions = {}): QwenProcessed {
  const roundtrip = opts.roundtrip === false ? img : toTensorToPilRoundtrip(img);
  const [fh, fw] = smartResize(
    roundtrip.height, roundtrip.width, QWEN_FACTOR,
    opts.fetchMinPixels ?? FETCH_MIN_PIXELS, opts.fetchMaxPixels ?? FETCH_MAX_PIXELS, 'fetch',
  );
  // Image.resize returns a copy when the size is unchanged
  const fetched = resize(roundtrip, fw, fh, 'bicubic');
  const [rh, rw] = smartResize(
    fetched.height, fetched.width, QWEN_FACTOR,
    opts.minPixels ?? STEP1X_MIN_PIXELS, opts.maxPixels ?? STEP1X_MAX_PIXELS, 'processor',
  );
  const resized = rh === fh && rw === fw ? fetched : resize(fetched, rw, rh, 'bicubic');
  const { pixelValues, gridThw } = patchify(resized, opts.rescaleFactor ?? 1 / 255, opts.mean, opts.std);
  const numPatches = gridThw[0] * gridThw[1] * gridThw[2];
  return {
    pixelValues, numPatches, gridThw,
    numImageTokens: numPatches / (QWEN_MERGE * QWEN_MERGE),
    roundtrip, fetched, resized,
  };
}

/**
 * Step1X's `ImageGenerator.input_process_image(img, img_size=sizeLevel)`: keep the aspect ratio at
 * about sizeLevel² pixels, sides floored to multiples of 16, PIL default (bicubic) resize.
 * Returns the resized image; the caller keeps the original size to resize the output back.
 */
export function inputProcessSize(width: number, height: number, sizeLevel: number): [number, number] {
  const r = width / height;
  let wNew: number, hNew: number;
  if (width > height) {
    wNew = Math.ceil(Math.sqrt(sizeLevel * sizeLevel * r));
    hNew = Math.ceil(wNew / r);
  } else {
    hNew = Math.ceil(Math.sqrt((sizeLevel * sizeLevel) / r));
    wNew = Math.ceil(hNew * r);
  }
  hNew = Math.floor(Math.ceil(hNew) / 16) * 16;
  wNew = Math.floor(Math.ceil(wNew) / 16) * 16;
  if (wNew < 16 || hNew < 16)
    throw new Step1xError(
      `input image ${width}x${height} is too elongated for size level ${sizeLevel}: it would be resized to ${wNew}x${hNew}`,
      ExitCode.INPUT,
    );
  return [wNew, hNew];
}

/** `input_process_image` at `size_level`: current official code resizes with LANCZOS, May 2025 with the default BICUBIC. */
export function inputProcessImage(img: RgbImage, sizeLevel = 512, filter: ResampleFilter = 'bicubic'): RgbImage {
  const [w, h] = inputProcessSize(img.width, img.height, sizeLevel);
  return resize(img, w, h, filter);
}

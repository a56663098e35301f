/**
 * Pillow-exact image resizing for RGB u8 images ([H, W, 3] row-major).
 *
 * A faithful port of Pillow 12.x `Image.resize(size, resample)` with the default box and
 * `reducing_gap=None` (what the official Step1X-Edit / Qwen code calls):
 *  - src/libImaging/Resample.c: `precompute_coeffs` (support scaled by the downscale factor = antialias),
 *    `normalize_coeffs_8bpc` (coefficients to 22-bit fixed point, PRECISION_BITS = 32 - 8 - 2),
 *    the horizontal pass first (only over the rows the vertical pass reads), then the vertical pass,
 *    each pass skipped when its size is unchanged, rounding by `1 << (PRECISION_BITS - 1)` and
 *    clipping through `clip8`;
 *  - src/PIL/Image.py: same size → copy; very tall images (H > 100·W, shrinking H) are resized
 *    vertically first (Pillow ≥ 12.2);
 *  - src/_imaging.c `_resize` + Geometry.c `ImagingScaleAffine`: NEAREST is an affine scale, not
 *    a convolution.
 * All coefficient math is IEEE f64 exactly as in C, so the results are bit-identical for
 * BICUBIC / BILINEAR / BOX. LANCZOS and HAMMING call sin/cos, whose last-ulp results may differ
 * between V8 and glibc; a differing coefficient would need to straddle a fixed-point rounding
 * boundary to matter.
 */
import { Step1xError, ExitCode } from '../errors.js';

export interface RgbImage {
  width: number;
  height: number;
  /** [height, width, 3] RGB, row-major */
  data: Uint8Array;
}

export type ResampleFilter = 'nearest' | 'box' | 'bilinear' | 'hamming' | 'bicubic' | 'lanczos';

interface Filter {
  fn: (x: number) => number;
  support: number;
}

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}
function bilinear(x: number): number {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}
function box(x: number): number {
  return x > -0.5 && x <= 0.5 ? 1 : 0;
}
// 0.54f / 0.46f in C are floats promoted to double.
const F054 = Math.fround(0.54);
const F046 = Math.fround(0.46);
function hamming(x: number): number {
  if (x < 0) x = -x;
  if (x === 0) return 1;
  if (x >= 1) return 0;
  x = x * Math.PI;
  return (Math.sin(x) / x) * (F054 + F046 * Math.cos(x));
}
function sinc(x: number): number {
  if (x === 0) return 1;
  x = x * Math.PI;
  return Math.sin(x) / x;
}
function lanczos(x: number): number {
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

const FILTERS: Record<Exclude<ResampleFilter, 'nearest'>, Filter> = {
  box: { fn: box, support: 0.5 },
  bilinear: { fn: bilinear, support: 1 },
  hamming: { fn: hamming, support: 1 },
  bicubic: { fn: bicubic, support: 2 },
  lanczos: { fn: lanczos, support: 3 },
};

const PRECISION_BITS = 32 - 8 - 2;
const HALF = 1 << (PRECISION_BITS - 1);
const SCALE = 2 ** PRECISION_BITS;

/** Fixed-point coefficients of one resampling axis: out pixel i reads in[bounds[2i] .. +bounds[2i+1]). */
interface Coeffs {
  ksize: number;
  bounds: Int32Array; // [outSize, 2] = (xmin, count)
  kk: Int32Array; // [outSize, ksize] 22-bit fixed point
}

/** `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box [0, inSize). */
export function precomputeCoeffs(inSize: number, outSize: number, filter: Filter): Coeffs {
  const in0 = 0;
  const in1 = inSize; // box coordinates are C floats; integral sizes < 2^24 are exact
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const inv = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let ww = 0;
    // C `(int)` truncates toward zero
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * inv);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let v = x < xmax ? k[x] : 0;
      if (x < xmax && ww !== 0) v /= ww;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * SCALE) : Math.trunc(0.5 + v * SCALE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** clip8(ss) = clip8_lookups[ss >> PRECISION_BITS], the table saturating to 0..255. */
function clip8(ss: number): number {
  const v = Math.floor(ss / SCALE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over input rows [offset, offset + outH): [inH, inW, 3] → [outH, outW, 3]. */
function resampleHorizontal(src: RgbImage, outW: number, offset: number, outH: number, c: Coeffs): RgbImage {
  const { ksize, bounds, kk } = c;
  const inW = src.width;
  const out = new Uint8Array(outH * outW * 3);
  const sd = src.data;
  for (let yy = 0; yy < outH; yy++) {
    const rowIn = (yy + offset) * inW * 3;
    const rowOut = yy * outW * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const kb = xx * ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      let p = rowIn + xmin * 3;
      for (let x = 0; x < xmax; x++, p += 3) {
        const w = kk[kb + x];
        s0 += sd[p] * w;
        s1 += sd[p + 1] * w;
        s2 += sd[p + 2] * w;
      }
      out[rowOut + xx * 3] = clip8(s0);
      out[rowOut + xx * 3 + 1] = clip8(s1);
      out[rowOut + xx * 3 + 2] = clip8(s2);
    }
  }
  return { width: outW, height: outH, data: out };
}

/** Vertical pass: [inH, W, 3] → [outH, W, 3]; bounds already shifted to the rows of `src`. */
function resampleVertical(src: RgbImage, outH: number, c: Coeffs, shift: number): RgbImage {
  const { ksize, bounds, kk } = c;
  const W = src.width;
  const rowLen = W * 3;
  const out = new Uint8Array(outH * rowLen);
  const sd = src.data;
  const acc = new Float64Array(rowLen);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - shift;
    const ymax = bounds[yy * 2 + 1];
    const kb = yy * ksize;
    acc.fill(HALF);
    for (let y = 0; y < ymax; y++) {
      const w = kk[kb + y];
      const row = (y + ymin) * rowLen;
      for (let i = 0; i < rowLen; i++) acc[i] += sd[row + i] * w;
    }
    const o = yy * rowLen;
    for (let i = 0; i < rowLen; i++) out[o + i] = clip8(acc[i]);
  }
  return { width: W, height: outH, data: out };
}

/** `ImagingResampleInner` with the default box. */
function resampleInner(img: RgbImage, outW: number, outH: number, f: Filter): RgbImage {
  const needH = outW !== img.width;
  const needV = outH !== img.height;
  const cv = precomputeCoeffs(img.height, outH, f);
  const yFirst = cv.bounds[0];
  const yLast = cv.bounds[outH * 2 - 2] + cv.bounds[outH * 2 - 1];
  let cur = img;
  let shift = 0;
  if (needH) {
    const ch = precomputeCoeffs(img.width, outW, f);
    cur = resampleHorizontal(img, outW, yFirst, yLast - yFirst, ch);
    shift = yFirst;
  }
  if (needV) cur = resampleVertical(cur, outH, cv, shift);
  if (cur === img) cur = { width: img.width, height: img.height, data: img.data.slice() };
  return cur;
}

/** Geometry.c `ImagingScaleAffine` (what `_resize` does for NEAREST): positions accumulate in f64. */
function resizeNearest(img: RgbImage, outW: number, outH: number): RgbImage {
  const a0 = img.width / outW;
  const a4 = img.height / outH;
  const xin = new Int32Array(outW);
  let xo = a0 * 0.5;
  for (let x = 0; x < outW; x++) {
    xin[x] = xo < 0 ? -1 : Math.trunc(xo);
    xo += a0;
  }
  const out = new Uint8Array(outW * outH * 3);
  let yo = a4 * 0.5;
  for (let y = 0; y < outH; y++) {
    const yi = yo < 0 ? -1 : Math.trunc(yo);
    yo += a4;
    if (yi < 0 || yi >= img.height) continue; // fill = 0
    for (let x = 0; x < outW; x++) {
      const xi = xin[x];
      if (xi < 0 || xi >= img.width) continue;
      const s = (yi * img.width + xi) * 3;
      const d = (y * outW + x) * 3;
      out[d] = img.data[s];
      out[d + 1] = img.data[s + 1];
      out[d + 2] = img.data[s + 2];
    }
  }
  return { width: outW, height: outH, data: out };
}

function checkImage(img: RgbImage, what: string): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new Step1xError(`${what}: image size ${width}x${height} is not a positive integer size`, ExitCode.INPUT);
  if (data.length !== width * height * 3)
    throw new Step1xError(
      `${what}: image data has ${data.length} bytes, expected [${height},${width},3] = ${width * height * 3}`,
      ExitCode.INPUT,
    );
}

/**
 * `PIL.Image.resize((width, height), filter)` of an RGB image (default BICUBIC, as Pillow).
 * Returns a new image (a copy when the size is unchanged).
 */
export function resize(img: RgbImage, width: number, height: number, filter: ResampleFilter = 'bicubic'): RgbImage {
  checkImage(img, 'resize input');
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new Step1xError(`resize: target size ${width}x${height} must be positive integers`, ExitCode.USAGE);
  if (width === img.width && height === img.height)
    return { width, height, data: img.data.slice() };
  if (filter === 'nearest') return resizeNearest(img, width, height);
  const f = FILTERS[filter];
  if (!f) throw new Step1xError(`resize: unknown filter '${filter}'`, ExitCode.USAGE);
  // Pillow >= 12.2: very tall images shrink vertically first, then horizontally.
  if (img.height > img.width * 100 && height < img.height) {
    const tmp = resampleInner(img, img.width, height, f);
    return resampleInner(tmp, width, height, f);
  }
  return resampleInner(img, width, height, f);
}

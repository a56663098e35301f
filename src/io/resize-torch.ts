/**
 * PyTorch's antialiased interpolation (`F.interpolate(..., antialias=True, align_corners=False)`), the
 * resizes of Step1X-Edit v1.2:
 *   - uint8 bicubic (Qwen2VLImageProcessorFast resizes the photo as a uint8 tensor on the CPU): PIL's
 *     separable filter (a = −0.5, support 2·scale when shrinking), horizontal pass then vertical, each
 *     rounded and clipped to uint8, but with int16 weights at the precision torch derives from the largest
 *     weight (the largest p ≤ 22 with round(w_max·2^(p+1)) < 2^15) instead of PIL's 22-bit int32 ones —
 *     which is why PIL's own bicubic differs (aten UpSampleKernel.cpp compute_index_ranges_int16_weights);
 *   - float bilinear (the VAE input from the original photo): the same geometry, float weights.
 * Shapes: images [H, W, 3] row-major; the float planes [3, H, W].
 */
import type { RgbImage } from './resize.js';

type Fn = (x: number) => number;
const cubic: Fn = (x) => {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
};
const triangle: Fn = (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0);

interface AxisWeights {
  ksize: number;
  xmin: Int32Array;
  xsize: Int32Array;
  /** [out, ksize] normalised f64 weights */
  w: Float64Array;
  wMax: number;
}

/** `_compute_indices_min_size_weights_aa` for every output index (align_corners false, scale in/out). */
function axisWeights(inSize: number, outSize: number, fn: Fn, interpSize: number): AxisWeights {
  const scale = inSize / outSize;
  const support = scale >= 1 ? interpSize * 0.5 * scale : interpSize * 0.5;
  const ksize = Math.ceil(support) * 2 + 1;
  const invscale = scale >= 1 ? 1 / scale : 1;
  const xmin = new Int32Array(outSize), xsize = new Int32Array(outSize), w = new Float64Array(outSize * ksize);
  let wMax = 0;
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - lo;
    let total = 0;
    for (let j = 0; j < n; j++) total += (w[i * ksize + j] = fn((j + lo - center + 0.5) * invscale));
    if (total !== 0) for (let j = 0; j < n; j++) wMax = Math.max(wMax, (w[i * ksize + j] /= total));
    xmin[i] = lo;
    xsize[i] = n;
  }
  return { ksize, xmin, xsize, w, wMax };
}

/** int16 weights and their precision, as torch rescales them for uint8 images. */
function int16Weights(a: AxisWeights): { k: Int32Array; precision: number } {
  let p = 0;
  for (p = 0; p < 22; p++) if (Math.trunc(0.5 + a.wMax * 2 ** (p + 1)) >= 1 << 15) break;
  const k = new Int32Array(a.w.length);
  for (let i = 0; i < a.w.length; i++) {
    const v = a.w[i] * 2 ** p;
    k[i] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
  }
  return { k, precision: p };
}

/** One uint8 pass along an axis of [H, W, 3]: `horizontal` resizes W, else H. */
function passU8(src: RgbImage, outSize: number, horizontal: boolean): RgbImage {
  const inSize = horizontal ? src.width : src.height;
  const a = axisWeights(inSize, outSize, cubic, 4);
  const { k, precision } = int16Weights(a);
  const W = horizontal ? outSize : src.width, H = horizontal ? src.height : outSize;
  const out = new Uint8Array(W * H * 3);
  const half = precision > 0 ? 2 ** (precision - 1) : 0, div = 2 ** precision;
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const o = horizontal ? x : y;
      for (let c = 0; c < 3; c++) {
        let s = half;
        for (let j = 0; j < a.xsize[o]; j++) {
          const sx = horizontal ? a.xmin[o] + j : x, sy = horizontal ? y : a.xmin[o] + j;
          s += src.data[(sy * src.width + sx) * 3 + c] * k[o * a.ksize + j];
        }
        const v = Math.floor(s / div);
        out[(y * W + x) * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
  return { width: W, height: H, data: out };
}

/** `F.interpolate(uint8 [1, 3, H, W], (height, width), mode="bicubic", antialias=True)`: horizontal, then vertical. */
export function resizeTorchU8Bicubic(img: RgbImage, width: number, height: number): RgbImage {
  let cur = img;
  if (width !== img.width) cur = passU8(cur, width, true);
  if (height !== img.height) cur = passU8(cur, height, false);
  return cur === img ? { ...img, data: img.data.slice() } : cur;
}

/** `F.interpolate(float [3, H, W], (height, width), mode="bilinear", antialias=True)` on planes `x` [3, H, W]. */
export function resizeTorchF32Bilinear(x: Float32Array, H: number, W: number, height: number, width: number): Float32Array {
  const ax = axisWeights(W, width, triangle, 2), ay = axisWeights(H, height, triangle, 2);
  const tmp = new Float32Array(3 * H * width), out = new Float32Array(3 * height * width);
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < H; y++)
      for (let i = 0; i < width; i++) {
        let s = 0;
        for (let j = 0; j < ax.xsize[i]; j++) s += Math.fround(ax.w[i * ax.ksize + j]) * x[(c * H + y) * W + ax.xmin[i] + j];
        tmp[(c * H + y) * width + i] = s;
      }
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < height; i++)
      for (let xx = 0; xx < width; xx++) {
        let s = 0;
        for (let j = 0; j < ay.xsize[i]; j++) s += Math.fround(ay.w[i * ay.ksize + j]) * tmp[(c * H + ay.xmin[i] + j) * width + xx];
        out[(c * height + i) * width + xx] = s;
      }
  return out;
}

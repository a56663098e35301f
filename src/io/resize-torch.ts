/**
 * torch's native uint8 CPU kernel of `F.interpolate(x, size, mode="bicubic"|"bilinear", antialias=True,
 * align_corners=False)` (aten/src/ATen/native/cpu/UpSampleKernel.cpp + UpSampleKernelAVXAntialias.h, ported from
 * Pillow-SIMD), which Qwen2VLImageProcessorFast runs on uint8 tensors: the resize of the v1.2 Qwen inputs
 * (golden README "Images"). Integer arithmetic, so AVX-512, AVX2 and the plain loop give the same bytes:
 *
 *   per axis   scale = in/out, support = (interp_size/2)·max(scale, 1), center = scale·(i + 0.5),
 *              xmin = max(trunc(center − support + 0.5), 0), xsize = min(trunc(center + support + 0.5), in) − xmin,
 *              w_j = filter((j + xmin − center + 0.5)/max(scale, 1)), normalised by their sum (f64)
 *   int16      precision = the largest p < 22 with round(wmax·2^(p+1)) < 2^15; w16 = round-half-away(w·2^p)
 *   pass       out = clamp((2^(p−1) + Σ src·w16) >> p, 0, 255), horizontal pass first (to a uint8
 *              buffer), then vertical; an axis whose size does not change is skipped
 *   filters    bicubic: Keys a = −0.5 (not the −0.75 of the non-antialiased path); bilinear: triangle
 *
 * Differs from PIL's bicubic (the slow processor) on ≈ 0.5 % of values by up to 2 (PIL: 22-bit int32 weights).
 */
import { Step1xError, ExitCode } from '../errors.js';
import type { RgbImage } from './resize.js';

type Filter = { support: number; fn: (x: number) => number };

const A = -0.5;
const FILTERS: Record<'bicubic' | 'bilinear', Filter> = {
  bicubic: {
    support: 2,
    fn: (x) => {
      x = Math.abs(x);
      if (x < 1) return ((A + 2) * x - (A + 3)) * x * x + 1;
      if (x < 2) return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
      return 0;
    },
  },
  bilinear: { support: 1, fn: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) },
};

interface AxisWeights {
  xmin: Int32Array;
  xsize: Int32Array;
  /** [out, maxSize] int16 weights */
  w: Int32Array;
  maxSize: number;
  precision: number;
}

function axisWeights(inSize: number, outSize: number, f: Filter): AxisWeights {
  const scale = inSize / outSize;
  const support = scale >= 1 ? f.support * scale : f.support;
  const invscale = scale >= 1 ? 1 / scale : 1;
  const maxSize = Math.ceil(support) * 2 + 1;
  const xmin = new Int32Array(outSize), xsize = new Int32Array(outSize);
  const wf = new Float64Array(outSize * maxSize);
  let wmax = 0;
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - lo;
    xmin[i] = lo;
    xsize[i] = n;
    let total = 0;
    for (let j = 0; j < n; j++) {
      const w = f.fn((j + lo - center + 0.5) * invscale);
      wf[i * maxSize + j] = w;
      total += w;
    }
    if (total !== 0)
      for (let j = 0; j < n; j++) {
        wf[i * maxSize + j] /= total;
        wmax = Math.max(wmax, wf[i * maxSize + j]);
      }
  }
  let precision = 0;
  for (; precision < 22; precision++) if (Math.trunc(0.5 + wmax * 2 ** (precision + 1)) >= 1 << 15) break;
  const w = new Int32Array(outSize * maxSize);
  for (let k = 0; k < w.length; k++) {
    const v = wf[k] * 2 ** precision;
    w[k] = v < 0 ? Math.trunc(v - 0.5) : Math.trunc(v + 0.5);
  }
  return { xmin, xsize, w, maxSize, precision };
}

function pass(src: Uint8Array, W: number, H: number, ax: AxisWeights, horizontal: boolean): Uint8Array {
  const outW = horizontal ? ax.xmin.length : W, outH = horizontal ? H : ax.xmin.length;
  const out = new Uint8Array(outW * outH * 3);
  const half = 1 << (ax.precision - 1), p = ax.precision;
  for (let y = 0; y < outH; y++)
    for (let x = 0; x < outW; x++) {
      const i = horizontal ? x : y, lo = ax.xmin[i], n = ax.xsize[i], wo = i * ax.maxSize;
      for (let c = 0; c < 3; c++) {
        let acc = half;
        for (let j = 0; j < n; j++) {
          const s = horizontal ? src[(y * W + lo + j) * 3 + c] : src[((lo + j) * W + x) * 3 + c];
          acc += s * ax.w[wo + j];
        }
        const v = acc >> p;
        out[(y * outW + x) * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
  return out;
}

/** `interpolate(uint8 image, (height, width), mode, antialias=True)` on CPU (see the header). */
export function resizeTorchU8(img: RgbImage, width: number, height: number, mode: 'bicubic' | 'bilinear' = 'bicubic'): RgbImage {
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0))
    throw new Step1xError(`resizeTorchU8: target size ${width}x${height} must be positive integers`, ExitCode.USAGE);
  const f = FILTERS[mode];
  let data = img.data, W = img.width;
  if (width !== img.width) {
    data = pass(data, W, img.height, axisWeights(img.width, width, f), true);
    W = width;
  }
  if (height !== img.height) data = pass(data, W, img.height, axisWeights(img.height, height, f), false);
  return { width, height, data: data === img.data ? img.data.slice() : data };
}

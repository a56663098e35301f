/**
 * PyTorch's antialiased float interpolation `F.interpolate(float [1, 3, H, W], size, mode="bilinear",
 * antialias=True, align_corners=False)`: the VAE input of Step1X-Edit v1.2, resized from the ORIGINAL photo.
 * Same geometry as the uint8 kernel of resize-torch.ts (scale = in/out, support = max(scale, 1), PIL-style
 * centres, weights normalised by their sum) with float weights and no rounding between the passes.
 * Planes [3, H, W] row-major.
 */
type Fn = (x: number) => number;
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

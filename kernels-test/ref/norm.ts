/** Plain-TS references for norm/modulation ops, computed in f64 over x viewed as [rows, C]. */
type Arr = ArrayLike<number>;

export function layerNorm(x: Arr, C: number, w: Arr | null, b: Arr | null, eps: number): Float64Array {
  const rows = x.length / C;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += x[r * C + c];
    const mean = s / C;
    let q = 0;
    for (let c = 0; c < C; c++) q += (x[r * C + c] - mean) ** 2;
    const rstd = 1 / Math.sqrt(q / C + eps); // biased variance, as torch.nn.LayerNorm
    for (let c = 0; c < C; c++) out[r * C + c] = (x[r * C + c] - mean) * rstd * (w ? w[c] : 1) + (b ? b[c] : 0);
  }
  return out;
}

export function rmsNorm(x: Arr, C: number, w: Arr, eps: number): Float64Array {
  const rows = x.length / C;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let q = 0;
    for (let c = 0; c < C; c++) q += x[r * C + c] ** 2;
    const k = 1 / Math.sqrt(q / C + eps);
    for (let c = 0; c < C; c++) out[r * C + c] = x[r * C + c] * k * w[c];
  }
  return out;
}

export function softmax(x: Arr, C: number): Float64Array {
  const rows = x.length / C;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, x[r * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(x[r * C + c] - m);
    for (let c = 0; c < C; c++) out[r * C + c] = Math.exp(x[r * C + c] - m) / s;
  }
  return out;
}

/** (1 + scale[b]) * x + shift[b] for x [B, L, C], shift/scale [B, C]. */
export function modulate(x: Arr, B: number, L: number, C: number, shift: Arr, scale: Arr): Float64Array {
  const out = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let c = 0; c < C; c++) {
        const i = (b * L + l) * C + c;
        out[i] = (1 + scale[b * C + c]) * x[i] + shift[b * C + c];
      }
  return out;
}

/** x + gate[b] * y for x, y [B, L, C], gate [B, C]. */
export function gatedResidual(x: Arr, B: number, L: number, C: number, gate: Arr, y: Arr): Float64Array {
  const out = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let c = 0; c < C; c++) {
        const i = (b * L + l) * C + c;
        out[i] = x[i] + gate[b * C + c] * y[i];
      }
  return out;
}

export function swiglu(gate: Arr, up: Arr): Float64Array {
  return Float64Array.from({ length: gate.length }, (_, i) => (gate[i] / (1 + Math.exp(-gate[i]))) * up[i]);
}

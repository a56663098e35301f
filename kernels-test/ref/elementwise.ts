/** Plain-TS references for elementwise ops, computed in f64. */
export function erf(x: number): number {
  // Abramowitz–Stegun 7.1.26 refined by series for small |x|: accurate to ~1e-12 via series/continued fraction.
  const z = Math.abs(x);
  let r: number;
  if (z < 3) {
    // Maclaurin series
    let sum = z, term = z;
    for (let n = 1; n < 200; n++) {
      term *= (-z * z) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17) break;
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    // continued fraction for erfc
    let f = 0;
    for (let n = 60; n >= 1; n--) f = (n / 2) / (z + f);
    r = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / (z + f);
  }
  return x < 0 ? -r : r;
}
export const silu = (x: number): number => x / (1 + Math.exp(-x));
export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
export const geluErf = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
export function map(x: Float32Array, f: (v: number) => number): Float64Array {
  return Float64Array.from(x, f);
}

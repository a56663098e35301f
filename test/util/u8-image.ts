/** u8 image against a golden one, with the cases' u8 rule: max |diff| ≤ maxDiff and at most `fraction` of the values differ. */
export function expectU8Within(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, maxDiff = 1, fraction = 0.02): void {
  if (got.length !== ref.length) throw new Error(`${name}: ${got.length} values, reference ${ref.length}`);
  let worst = 0, differ = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    if (d) differ++;
    worst = Math.max(worst, d);
  }
  const frac = differ / got.length;
  if (worst > maxDiff || frac > fraction) throw new Error(`${name}: max |diff| ${worst} (≤ ${maxDiff}), differing fraction ${frac.toFixed(4)} (≤ ${fraction})`);
}

/**
 * Golden comparisons: the case.json `tolerance` list (first entry whose glob matches wins; `*` matches
 * any run of characters, dots included; everything else is literal) and the three entry forms:
 *   {atol, rtol}                    |x − ref| ≤ atol + rtol·|ref| elementwise (NaN fails)
 *   {exact: true}                   bitwise-equal values (ints, masks, u8 inputs)
 *   {u8_max_diff, u8_max_fraction}  max |x − ref| ≤ u8_max_diff and at most that fraction of values differ
 * Every comparison also reports maxAbs and relL2 = ‖x − ref‖ / ‖ref‖ (null when ‖ref‖ = 0).
 */
export interface Tolerance {
  match: string;
  atol?: number;
  rtol?: number;
  exact?: boolean;
  u8_max_diff?: number;
  u8_max_fraction?: number;
  /** Reduced-precision contract (below): relative L2 error bound for a float tensor. */
  rel_l2?: number;
  /** Reduced-precision contract: at least this fraction of u8 values within ±u8_max_diff. */
  u8_min_within?: number;
}

/**
 * The reduced-precision contract of f16-operand kernels (--precision mixed, the subgroup-matrix
 * family): float tensors relL2 ≤ 1e-2, u8 images within ±2 on ≥ 98 % of values, exact entries
 * (integers, masks) stay exact. Replaces a case's own entry; undefined stays undefined.
 */
export function reducedPrecision(t: Tolerance | undefined): Tolerance | undefined {
  if (!t || t.exact) return t;
  if (t.u8_max_diff !== undefined) return { match: t.match, u8_max_diff: 2, u8_min_within: 0.98 };
  return { match: t.match, rel_l2: 1e-2 };
}

export interface TensorResult {
  name: string;
  /** null when not compared (skipped / missing / size mismatch) or not finite. */
  maxAbs: number | null;
  relL2: number | null;
  pass: boolean;
  skipped: boolean;
}

/** A result plus a human-readable note for the text report. */
export interface TensorDetail extends TensorResult {
  note: string;
}

export function globToRegExp(glob: string): RegExp {
  return new RegExp('^' + glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$', 's');
}

export function findTolerance(list: readonly Tolerance[], name: string): Tolerance | undefined {
  return list.find((t) => typeof t?.match === 'string' && globToRegExp(t.match).test(name));
}

export function describeTolerance(t: Tolerance): string {
  if (t.exact) return 'exact';
  if (t.rel_l2 !== undefined) return `reduced precision: relL2 ${t.rel_l2}`;
  if (t.u8_min_within !== undefined) return `reduced precision: ±${t.u8_max_diff} on ≥ ${100 * t.u8_min_within}% of values`;
  if (t.u8_max_diff !== undefined) return `u8_max_diff ${t.u8_max_diff}, u8_max_fraction ${t.u8_max_fraction ?? 0}`;
  return `atol ${t.atol ?? 0}, rtol ${t.rtol ?? 0}`;
}

function num(v: number | null): string {
  return v === null ? 'null' : v === 0 ? '0' : v.toExponential(3);
}

/** Compare a computed tensor with its reference under `tol` (undefined tol = failure). */
export function compareTensor(name: string, got: ArrayLike<number>, ref: ArrayLike<number>, tol: Tolerance | undefined): TensorDetail {
  if (got.length !== ref.length)
    return { name, maxAbs: null, relL2: null, pass: false, skipped: false, note: `computed ${got.length} values, reference has ${ref.length}` };
  let maxAbs = 0, d2 = 0, r2 = 0, bad = 0, differ = 0, firstBad = -1, nan = false;
  const exact = !!tol?.exact, u8 = tol?.u8_max_diff !== undefined, l2 = tol?.rel_l2 !== undefined;
  let outside = 0; // u8_min_within: values beyond ±u8_max_diff
  const atol = tol?.atol ?? 0, rtol = tol?.rtol ?? 0;
  for (let i = 0; i < ref.length; i++) {
    const a = got[i], r = ref[i];
    const d = Math.abs(a - r);
    if (Number.isNaN(d)) {
      // NaN in both is "equal" only for exact comparisons of identical bit patterns
      if (!(exact && Number.isNaN(a) && Number.isNaN(r))) nan = true;
    } else {
      if (d > maxAbs) maxAbs = d;
      d2 += d * d;
    }
    if (Number.isFinite(r)) r2 += r * r;
    if (d !== 0 && !(exact && Number.isNaN(a) && Number.isNaN(r))) differ++;
    if (u8 && !(d <= (tol?.u8_max_diff ?? 0))) outside++;
    const ok = exact ? (a === r || (Number.isNaN(a) && Number.isNaN(r))) : u8 || l2 ? true : d <= atol + rtol * Math.abs(r);
    if (!ok) {
      bad++;
      if (firstBad < 0) firstBad = i;
    }
  }
  const n = ref.length;
  const relL2 = nan ? null : r2 > 0 ? Math.sqrt(d2) / Math.sqrt(r2) : null;
  const mAbs = nan ? null : maxAbs;
  if (!tol) return { name, maxAbs: mAbs, relL2, pass: false, skipped: false, note: 'no tolerance entry matches this name' };
  let pass: boolean;
  let note: string;
  if (u8 && tol.u8_min_within !== undefined) {
    const within = n ? (n - outside) / n : 1;
    pass = !nan && within >= tol.u8_min_within;
    note = `${n - outside}/${n} values within ±${tol.u8_max_diff} (${(100 * within).toFixed(3)}%)`;
  } else if (l2) {
    pass = !nan && (relL2 === null ? maxAbs <= 1e-6 : relL2 <= tol.rel_l2!);
    note = `${n} values${nan ? ', NaN in the result' : ''}`;
  } else if (u8) {
    const frac = n ? differ / n : 0;
    pass = !nan && maxAbs <= (tol.u8_max_diff ?? 0) && frac <= (tol.u8_max_fraction ?? 0);
    note = `${differ}/${n} values differ (${(100 * frac).toFixed(3)}%)`;
  } else {
    pass = !nan && bad === 0;
    note = bad ? `${bad}/${n} outside; first at ${firstBad}: got ${got[firstBad]}, ref ${ref[firstBad]}` : `${n} values`;
    if (nan) note += ', NaN in the result';
  }
  return { name, maxAbs: mAbs, relL2, pass, skipped: false, note: `${note} (${describeTolerance(tol)})` };
}

/** One line of the text report. */
export function formatDetail(d: TensorDetail): string {
  const status = d.skipped ? 'SKIP' : d.pass ? 'PASS' : 'FAIL';
  const nums = d.skipped || (d.maxAbs === null && d.relL2 === null && !d.pass && d.note.startsWith('not computed')) ? '' : `maxAbs=${num(d.maxAbs)} relL2=${num(d.relL2)} `;
  return `${status} ${d.name.padEnd(32)} ${nums}${d.note}`;
}

/**
 * Ranked ids (a top-k of scores, e.g. `mid.*.raw_logits_top5_ids` beside `mid.*.raw_logits_top5`): an exact
 * comparison that fails only by a reordering within a row, each id moved to a rank whose reference score lies
 * within the scores' own tolerance of its own, is a pass — their order is not determined by an f32 model (score2 step 91 of
 * v12_thinker_greedy_tiny: 18.371675 vs 18.371674, one ulp; under the reduced-precision contract, scores within
 * rel_l2 of each other). The last rank of a row may hold another id where our own score there (`gotScores`) is
 * within tolerance of the reference's: a tie at the top-k's border. Returns the updated detail, or the one given.
 */
export function explainRankSwaps(d: TensorDetail, got: ArrayLike<number>, ref: ArrayLike<number>, refScores: ArrayLike<number>, k: number, scoreTol: Tolerance | undefined, gotScores?: ArrayLike<number>): TensorDetail {
  if (d.pass || !scoreTol || scoreTol.exact || scoreTol.u8_max_diff !== undefined || got.length !== ref.length || refScores.length !== ref.length || k < 2) return d;
  // the reduced-precision contract bounds the scores by relative L2 (rel_l2): read per element as relative
  const bound = (r: number) => (scoreTol.rel_l2 !== undefined ? scoreTol.rel_l2 * Math.abs(r) : (scoreTol.atol ?? 0) + (scoreTol.rtol ?? 0) * Math.abs(r));
  const close = (i: number, j: number) => Math.abs(refScores[i] - refScores[j]) <= bound(refScores[i]);
  let moved = 0;
  for (let row = 0; row < ref.length; row += k) {
    const ids = new Set<number>();
    for (let i = row; i < row + k; i++) {
      if (ids.has(got[i])) return d; // a repeated id is no reordering
      ids.add(got[i]);
      if (got[i] === ref[i]) continue;
      let j = row;
      while (j < row + k && ref[j] !== got[i]) j++;
      // the last rank may hold another id where our score there ties the reference's (the top-k's border)
      const border = j === row + k && i === row + k - 1 && gotScores !== undefined && Math.abs(gotScores[i] - refScores[i]) <= bound(refScores[i]);
      if (!border && (j === row + k || !close(i, j))) return d; // another id, or a rank its score does not reach
      moved++;
    }
  }
  return { ...d, pass: true, note: `${d.note}; ${moved} rank(s) reordered, each among reference scores within their tolerance` };
}

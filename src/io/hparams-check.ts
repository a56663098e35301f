/**
 * Range checks of `step1x.json` (tiny-model hyper-parameters) before anything is sized or computed from
 * it: a model directory is untrusted input. `max_length 1e12` or `max_pixels 1e15` would end in a typed
 * array allocation failure after gigabytes; `ae.scale_factor "x"` or a negative eps would run to an
 * all-black image. Each bad value is one line naming the file, the key and the allowed range (exit 4).
 */
import { ExitCode, Step1xError } from '../errors.js';

type Json = Record<string, unknown>;

/** Floats with their own ranges (open lower bound for eps-like values); any other number is an integer-ish size. */
const FLOAT_RANGES: [RegExp, number, number, string][] = [
  [/eps$/, 0, 1, 'in (0, 1)'],
  [/^(scale_factor|shift_factor)$/, -100, 100, 'a finite number in [-100, 100]'],
  [/^mlp_ratio$/, 0, 64, 'in (0, 64]'],
  [/^theta$/, 0, 1e9, 'in (0, 1e9]'],
];
const MAX_SIZE = 1e6;

export function checkHparams(j: Json, path: string): void {
  const bad = (key: string, v: unknown, want: string): never => {
    throw new Step1xError(`${path}: "${key}" = ${JSON.stringify(v)?.slice(0, 60)} must be ${want}; the file is damaged`, ExitCode.WEIGHTS);
  };
  for (const part of ['dit', 'connector', 'ae'] as const) {
    const o = j[part];
    if (o === undefined) continue;
    if (!o || typeof o !== 'object' || Array.isArray(o)) bad(part, o, 'an object');
    for (const [k, v] of Object.entries(o as Json)) {
      const key = `${part}.${k}`;
      if (typeof v === 'boolean') continue;
      if (typeof v === 'string') {
        if (part === 'dit' && (k === 'version' || k === 'mode')) continue;
        bad(key, v, 'a number');
      }
      const nums = Array.isArray(v) ? v : [v];
      if (Array.isArray(v) && (v.length === 0 || v.length > 16)) bad(key, v, 'a list of 1 to 16 numbers');
      const fr = FLOAT_RANGES.find(([re]) => re.test(k));
      for (const x of nums) {
        if (typeof x !== 'number' || !Number.isFinite(x)) bad(key, v, fr ? fr[3] : 'a finite number');
        if (fr) {
          const [, lo, hi, want] = fr;
          if (!(lo < 0 ? x >= lo && x <= hi : x > lo && x <= hi) || (/eps$/.test(k) && x >= 1)) bad(key, v, want);
        } else if (!Number.isInteger(x) || x < 0 || x > MAX_SIZE) bad(key, v, `an integer in [0, ${MAX_SIZE}]`);
      }
    }
  }
  const e = j.embedder;
  if (e === undefined) return;
  if (!e || typeof e !== 'object' || Array.isArray(e)) bad('embedder', e, 'an object');
  const emb = e as Json;
  const int = (k: string, lo: number, hi: number) => {
    const v = emb[k];
    if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)) bad(`embedder.${k}`, v, `an integer in [${lo}, ${hi}]`);
    return v as number | undefined;
  };
  const maxLength = int('max_length', 1, 8192) ?? 640;
  int('drop_prefix_tokens', 0, maxLength - 1);
  const lo = int('min_pixels', 28 * 28, 1 << 26), hi = int('max_pixels', 28 * 28, 1 << 26);
  if (lo !== undefined && hi !== undefined && lo > hi) bad('embedder.min_pixels', lo, `at most max_pixels (${hi})`);
}

/**
 * The v1.2 prompt's quote segmentation (`split_string_in_quotation` and
 * `split_string_in_quotation_and_special_tokens` of pipeline_step1x_edit_v1p2.py, Peyton-Chen/diffusers
 * c69df6bd), pinned row by row by the golden case `v12_parsers`. Indices are Unicode code points, as in Python.
 *
 * Inside `"…"` or `“…”` every character is its own segment (flag true); the opening quote stays with the
 * preceding text, the closing quote starts the next segment; `"` closes only `"`, `“` only `”`; a `“` with an
 * empty buffer is dropped; an unclosed quote turns back into plain text appended to the last plain segment.
 * The first `prefixLen` code points are never split.
 */

export type Segments = [string[], boolean[]];

export function splitStringInQuotation(s: string, prefixLen: number): Segments {
  const result: string[] = [];
  const inQuote: boolean[] = [];
  let state: 'OUTSIDE' | 'EN' | 'ZH' = 'OUTSIDE';
  let buffer = '';
  let quoted: string[] = [];
  let idx = 0;
  for (const ch of s) {
    if (idx++ < prefixLen) {
      buffer += ch;
      continue;
    }
    if (state === 'OUTSIDE') {
      if (ch === '"') {
        result.push(buffer + '"');
        inQuote.push(false);
        buffer = '';
        state = 'EN';
      } else if (ch === '“') {
        if (buffer) {
          result.push(buffer + '“');
          inQuote.push(false);
        }
        buffer = '';
        state = 'ZH';
      } else buffer += ch;
    } else if ((state === 'EN' && ch === '"') || (state === 'ZH' && ch === '”')) {
      result.push(...quoted);
      inQuote.push(...quoted.map(() => true));
      quoted = [];
      state = 'OUTSIDE';
      buffer = ch;
    } else quoted.push(ch);
  }
  if (state !== 'OUTSIDE') {
    const malformed = quoted.join('') + buffer;
    if (result.length && !inQuote[inQuote.length - 1]) result[result.length - 1] += malformed;
    else {
      result.push(malformed);
      inQuote.push(false);
    }
  } else if (buffer) {
    result.push(buffer);
    inQuote.push(false);
  }
  return [result, inQuote];
}

/**
 * Splits at the special tokens first (longest first; empty parts dropped), then each part at quotes with the
 * prefix length shifted by the part's code-point offset. Special-token parts come out as one plain segment.
 */
export function splitStringInQuotationAndSpecialTokens(s: string, prefixLen: number, specialTokens: readonly string[]): Segments {
  if (!specialTokens.length) return splitStringInQuotation(s, prefixLen);
  const sorted = [...new Set(specialTokens)].sort((a, b) => b.length - a.length);
  const re = new RegExp(`(${sorted.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`, 'u');
  const parts = s.split(re).filter((p) => p.length > 0);
  const segs: string[] = [];
  const flags: boolean[] = [];
  let start = 0;
  for (const part of parts) {
    const [p, f] = specialTokens.includes(part) ? [[part], [false]] : splitStringInQuotation(part, Math.max(0, prefixLen - start));
    segs.push(...p);
    flags.push(...f);
    start += Array.from(part).length;
  }
  return [segs, flags];
}

/**
 * The few Python semantics the v1.2 thinker's parsers depend on, reproduced exactly where the reference
 * strings and numbers can reach them: `str.strip()` (Python's whitespace set, not JS `trim`), `json.loads`
 * (which also accepts `NaN`, `Infinity`, `-Infinity`), `int()` / `float()` of JSON values and strings,
 * `str()` of JSON values, the builtin `min`/`max` with NaN, and `float(f"{x:.4f}")` (round half to even on
 * the exact binary value). Strings are handled by code point where Python indexes them.
 */

/** Python's `str.isspace()` set (what `str.strip()` with no argument removes). */
const PY_SPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

export function isPySpace(ch: string): boolean {
  return PY_SPACE.has(ch.codePointAt(0)!);
}

/** `s.strip()`. */
export function pyStrip(s: string): string {
  let a = 0, b = s.length;
  while (a < b && PY_SPACE.has(s.charCodeAt(a))) a++;
  while (b > a && PY_SPACE.has(s.charCodeAt(b - 1))) b--;
  return s.slice(a, b);
}

/** Thrown where the Python code would raise (the parsers catch it like `except Exception`). */
export class PyError extends Error {
  constructor(readonly type: string, message: string) {
    super(`${type}: ${message}`);
  }
}

/** `json.loads(text)` of Python 3.11: standard JSON plus the NaN / Infinity / -Infinity literals. */
export function pyJsonLoads(text: string): unknown {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const err = (what: string): never => {
    throw new PyError('JSONDecodeError', `${what} at char ${i}`);
  };
  const lit = (word: string, v: unknown) => {
    if (text.startsWith(word, i)) {
      i += word.length;
      return v;
    }
    return err('Expecting value');
  };
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o: Record<string, unknown> = {};
      ws();
      if (text[i] === '}') {
        i++;
        return o;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') err('Expecting property name enclosed in double quotes');
        const k = str();
        ws();
        if (text[i] !== ':') err("Expecting ':' delimiter");
        i++;
        o[k] = value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return o;
        } else err("Expecting ',' delimiter");
      }
    }
    if (c === '[') {
      i++;
      const a: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return a;
        } else err("Expecting ',' delimiter");
      }
    }
    if (c === '"') return str();
    if (c === 'n') return lit('null', null);
    if (c === 't') return lit('true', true);
    if (c === 'f') return lit('false', false);
    if (c === 'N') return lit('NaN', NaN);
    if (c === 'I') return lit('Infinity', Infinity);
    if (c === '-' && text.startsWith('-Infinity', i)) return lit('-Infinity', -Infinity);
    const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?/.exec(text.slice(i));
    if (!m) return err('Expecting value');
    i += m[0].length;
    return Number(m[0]);
  };
  const str = (): string => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i++;
      i++;
    }
    if (i >= text.length) err('Unterminated string starting');
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      return err('Invalid string');
    }
  };
  const v = value();
  ws();
  if (i !== text.length) err('Extra data');
  return v;
}

const isDict = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
export { isDict };

/** Python truthiness of a JSON value (`x or 0`). */
export function pyTruthy(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isDict(v)) return Object.keys(v).length > 0;
  return true; // NaN included, as in Python
}

const digits = '\\d(?:_?\\d)*';

/** `int(v)` for a JSON value. */
export function pyInt(v: unknown): number {
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new PyError(Number.isNaN(v) ? 'ValueError' : 'OverflowError', `cannot convert ${v} to integer`);
    return Math.trunc(v) + 0;
  }
  if (typeof v === 'string') {
    const s = pyStrip(v);
    if (!new RegExp(`^[-+]?${digits}$`).test(s)) throw new PyError('ValueError', `invalid literal for int() with base 10: '${v}'`);
    return Number(s.replace(/_/g, ''));
  }
  throw new PyError('TypeError', `int() argument must be a string or a real number, not ${pyTypeName(v)}`);
}

/** `float(v)` for a JSON value. */
export function pyFloat(v: unknown): number {
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    const s = pyStrip(v);
    const special = /^([-+]?)(inf|infinity|nan)$/i.exec(s);
    if (special) return /nan/i.test(special[2]) ? NaN : special[1] === '-' ? -Infinity : Infinity;
    const m = new RegExp(`^[-+]?(${digits})?(\\.(${digits})?)?([eE][-+]?${digits})?$`).exec(s);
    if (m && (m[1] !== undefined || m[3] !== undefined)) return Number(s.replace(/_/g, ''));
    throw new PyError('ValueError', `could not convert string to float: '${v}'`);
  }
  throw new PyError('TypeError', `float() argument must be a string or a real number, not '${pyTypeName(v)}'`);
}

function pyTypeName(v: unknown): string {
  if (v === null || v === undefined) return 'NoneType';
  if (Array.isArray(v)) return 'list';
  if (typeof v === 'object') return 'dict';
  return typeof v;
}

/** `repr(float)` / `str(int)` for a JSON number (JSON integers stay integers: 7 → "7", 7.5 → "7.5"). */
export function pyNumStr(v: number): string {
  if (Number.isNaN(v)) return 'nan';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  return String(v);
}

/** `str(v)` / `repr(v)` of a JSON value (strings quoted only inside containers). */
export function pyStr(v: unknown, nested = false): string {
  if (typeof v === 'string') return nested ? `'${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'` : v;
  if (v === null || v === undefined) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return pyNumStr(v);
  if (Array.isArray(v)) return `[${v.map((x) => pyStr(x, true)).join(', ')}]`;
  return `{${Object.entries(v as object).map(([k, x]) => `${pyStr(k, true)}: ${pyStr(x, true)}`).join(', ')}}`;
}

/** The builtin `min(a, b)` (keeps `a` unless `b < a`, so NaN never wins as the second argument). */
export const pyMin = (a: number, b: number): number => (b < a ? b : a);
export const pyMax = (a: number, b: number): number => (b > a ? b : a);

/** `float(f"{x:.4f}")`: round to 4 decimals, exact ties (representable k + 0.5 ulps of 1e-4) to even. */
export function pyRound4(x: number): number {
  if (!Number.isFinite(x)) return x;
  const s = x * 1e5;
  if (Number.isInteger(s) && s / 1e5 === x && Math.abs(s) % 10 === 5) {
    const lo = Math.trunc(s / 10); // |lo| is the truncated 4-decimal integer
    const even = lo % 2 === 0 ? lo : lo + Math.sign(s);
    return even / 1e4;
  }
  return Number(x.toFixed(4));
}

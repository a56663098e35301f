/**
 * Golden kind `v12_parsers` (case v12_parsers): every parser of the v1.2 thinker and prompt on the case's
 * tables of raw strings (`tables.<fn>.rows[i].input` → `.returns`, or `.raises` with the Python exception
 * type). No tensors: `checkParserTables` compares each row exactly (JSON equality, tuples as lists) and
 * `run` fails with every mismatching row.
 */
import { ExitCode, Step1xError, fail } from '../../errors.js';
import type { GoldenContext } from '../registry.js';
import {
  analyzeText, applyScoreCaps, formatText, parseJsonBlock, validateReflection, validateScoreResponse, validateString,
} from '../../pipeline/reason/parsers.js';
import { PyError, pyJsonLoads } from '../../pipeline/reason/python.js';
import { splitStringInQuotation, splitStringInQuotationAndSpecialTokens } from '../../models/qwen25vl/quote-split.js';

/**
 * The 22 distinct special tokens the v1.2 pipeline splits at (`_special_token_strings`: the tokenizer's
 * additional_special_tokens + every added token), as in the Qwen2.5-VL tokenizer_config.json.
 */
export const QWEN_SPECIAL_TOKENS = [
  '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>', '<|box_start|>', '<|box_end|>',
  '<|quad_start|>', '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>',
  '<|video_pad|>', '<|endoftext|>', '<tool_call>', '</tool_call>', '<|fim_prefix|>', '<|fim_middle|>',
  '<|fim_suffix|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>',
];

const FUNCTIONS: Record<string, (...a: any[]) => unknown> = {
  validate_string: (s: string) => validateString(s),
  format_text: (s: string) => formatText(s),
  validate_reflection_response: (s: string) => validateReflection(s),
  analyze_text: (s: string) => analyzeText(s),
  parse_json_block: (s: string) => parseJsonBlock(s),
  apply_score_caps_and_finalize: (s: string) => applyScoreCaps(pyJsonLoads(s)),
  validate_score1_response: (s: string) => validateScoreResponse(s),
  split_string_in_quotation: (s: string, n: number) => splitStringInQuotation(s, n),
  split_string_in_quotation_and_special_tokens: (s: string, n: number) => splitStringInQuotationAndSpecialTokens(s, n, QWEN_SPECIAL_TOKENS),
};

/** JSON equality (numbers by value, objects regardless of key order). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a === 'number' && typeof b === 'number') return Number.isNaN(a) && Number.isNaN(b);
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => jsonEqual(x, b[i]));
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a), kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual((a as any)[k], (b as any)[k]));
  }
  return false;
}

export interface RowResult {
  fn: string;
  row: number;
  pass: boolean;
  got: unknown;
  want: unknown;
}

export function checkParserTables(caseJson: any): RowResult[] {
  const tables = caseJson?.tables;
  if (!tables || typeof tables !== 'object') fail('v12_parsers: case.json has no "tables"', ExitCode.USAGE);
  const out: RowResult[] = [];
  for (const [fn, table] of Object.entries<any>(tables)) {
    const f = FUNCTIONS[fn];
    if (!f) fail(`v12_parsers: no implementation for table "${fn}" (known: ${Object.keys(FUNCTIONS).join(', ')})`, ExitCode.USAGE);
    (table.rows as any[]).forEach((row, i) => {
      let got: unknown;
      try {
        got = { returns: f(...row.input) };
      } catch (e) {
        if (!(e instanceof PyError)) throw e;
        got = { raises: e.type };
      }
      const want = 'raises' in row ? { raises: row.raises } : { returns: row.returns };
      out.push({ fn, row: i, pass: jsonEqual(got, want), got, want });
    });
  }
  return out;
}

export async function run(ctx: GoldenContext): Promise<void> {
  const rows = checkParserTables(ctx.caseJson);
  const bad = rows.filter((r) => !r.pass);
  const fns = new Set(rows.map((r) => r.fn));
  ctx.log(`${rows.length - bad.length}/${rows.length} rows exact over ${fns.size} functions`);
  if (bad.length)
    throw new Step1xError(`v12_parsers: ${bad.length} rows differ:\n${bad.map((r) => `  ${r.fn}[${r.row}]: got ${JSON.stringify(r.got)}, want ${JSON.stringify(r.want)}`).join('\n')}`, ExitCode.MISMATCH);
}

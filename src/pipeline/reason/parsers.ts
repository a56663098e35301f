/**
 * The v1.2 thinker's string parsers, rule for rule as `pipeline_step1x_edit_thinker.py` (Peyton-Chen/diffusers
 * step1xedit_v1p2, c69df6bd) writes them; pinned row by row (returns and raises) by the golden case
 * `v12_parsers`. Where the Python raises, these throw a `PyError` naming the Python exception type.
 *
 *   validateString          module `validate_string`: the reflection text `format_text` accepts
 *   formatText              `Step1XEditThinker.format_text` → [success, reflection prompt | null]
 *   validateReflection      `ImageEditEvaluator_EN._validate_reflection_response` → [ok, cleaned | error text]
 *   analyzeText             `analyze_text`: '中文' when more than one CJK ideograph, else '英文'
 *   parseJsonBlock          `_parse_json_block`: json.loads of the first `{` … last `}` span, null on failure
 *   applyScoreCaps          `_apply_score_caps_and_finalize` (the consistency judge's caps), null on failure
 *   validateScoreResponse   `_validate_score1_response` (score1 and score2 JSON)
 */
import { PyError, isDict, pyFloat, pyInt, pyJsonLoads, pyMax, pyMin, pyRound4, pyStr, pyStrip, pyTruthy } from './python.js';

export const TAG_THINK = '<#Think>';
export const REFLECTION_TAGS = ['<#Reflection>', '<#Failed>', '<#Success>', '<#Others>'] as const;

/** Python `str.count` (non-overlapping). */
function count(s: string, sub: string): number {
  let n = 0;
  for (let i = s.indexOf(sub); i >= 0; i = s.indexOf(sub, i + sub.length)) n++;
  return n;
}

export function validateString(text: string): boolean {
  if (!text.startsWith(TAG_THINK) || count(text, TAG_THINK) !== 1) return false;
  return REFLECTION_TAGS.reduce((n, t) => n + count(text, t), 0) === 1;
}

/**
 * `format_text`: success for `<#Success>`/`<#Others>`; for `<#Reflection>` the text after the tag,
 * unstripped (its leading space reaches the next round's edit prompt); null for `<#Failed>` or an invalid text.
 */
export function formatText(text: string): [boolean, string | null] {
  if (!validateString(text)) return [false, null];
  if (text.includes('<#Reflection>')) return [false, text.split('<#Reflection>')[1]];
  if (text.includes('<#Success>') || text.includes('<#Others>')) return [true, null];
  return [false, null];
}

const TAGS_REPR = `[${REFLECTION_TAGS.map((t) => `'${t}'`).join(', ')}]`;

export function validateReflection(text: string): [boolean, string] {
  const thinkIdx = text.indexOf(TAG_THINK);
  if (thinkIdx < 0) return [false, '错误: 缺少 <#Think>'];
  const present = REFLECTION_TAGS.filter((t) => text.includes(t));
  if (present.length !== 1) return [false, `错误: 需要且仅需要 ${TAGS_REPR} 之一, 但找到了 ${present.length} 个。`];
  const tag = present[0];
  if (count(text, tag) > 1) return [false, `错误: 标签 ${tag} 出现次数 > 1`];
  if (text.indexOf(tag) < thinkIdx) return [false, '错误: 反思/失败/成功标签必须出现在 <#Think> 之后'];
  return [true, pyStrip(text.slice(thinkIdx))];
}

export type Language = '中文' | '英文';

export function analyzeText(text: string): Language {
  const cjk = text.match(/[\u4e00-\u9fff]/g)?.length ?? 0;
  return cjk > 1 ? '中文' : '英文';
}

export function parseJsonBlock(content: string): unknown | null {
  const a = content.indexOf('{'), b = content.lastIndexOf('}');
  if (a < 0 || b < a) return null;
  try {
    return pyJsonLoads(content.slice(a, b + 1));
  } catch (e) {
    if (e instanceof PyError) return null;
    throw e;
  }
}

export interface ConsistencyResult {
  score: number;
  raw_score: number;
  cap_trace: string[];
  meets_instruction: string;
  major_conflicts: number;
  minor_conflicts: number;
  hallucinations: number;
  omissions: number;
  reason: string;
}

/** `dict.get(key, dflt)` of a parsed JSON object; a non-dict raises like Python's AttributeError. */
function get(obj: unknown, key: string, dflt: unknown): unknown {
  if (!isDict(obj)) throw new PyError('AttributeError', `'${Array.isArray(obj) ? 'list' : typeof obj}' object has no attribute 'get'`);
  return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : dflt;
}

export function applyScoreCaps(obj: unknown): ConsistencyResult | null {
  try {
    const intOr0 = (k: string) => {
      const v = get(obj, k, 0);
      return pyInt(pyTruthy(v) ? v : 0);
    };
    const mi = pyStrip(pyStr(get(obj, 'meets_instruction', ''))).toLowerCase();
    const major = intOr0('major_conflicts');
    const minor = intOr0('minor_conflicts');
    const hallu = intOr0('hallucinations');
    const omit = intOr0('omissions');
    let raw = pyFloat(get(obj, 'raw_score', 0));
    const reason = pyStrip(pyStr(get(obj, 'reason', '')));
    if (raw >= 0 && raw <= 1.0000001) raw *= 10.0;
    raw = pyMax(0.0, pyMin(10.0, raw));
    let cap = 10.0;
    const trace: string[] = [];
    if (mi === 'no') {
      cap = pyMin(cap, 2.0);
      trace.push('cap<=2: 未满足指令关键要求');
    } else if (mi === 'partial') {
      cap = pyMin(cap, 5.0);
      trace.push('cap<=5: 仅部分满足指令');
    }
    if (major >= 2) {
      cap = pyMin(cap, 5.0);
      trace.push('cap<=5: 多个明显矛盾');
    } else if (major === 1) {
      cap = pyMin(cap, 8.0);
      trace.push('cap<=8: 存在1个明显矛盾');
    }
    if (hallu > 0 || omit > 0) {
      cap = pyMin(cap, 7.0);
      const why: string[] = [];
      if (hallu > 0) why.push(`幻觉x${hallu}`);
      if (omit > 0) why.push(`遗漏x${omit}`);
      trace.push(`cap<=7: ${why.join(', ')}`);
    }
    if (mi !== 'yes' || major > 0 || hallu > 0 || omit > 0) {
      cap = pyMin(cap, 8.99);
      trace.push('cap<9: 存在明显差异/问题');
    }
    return {
      score: pyRound4(pyMin(raw, cap)), raw_score: raw, cap_trace: trace, meets_instruction: mi,
      major_conflicts: major, minor_conflicts: minor, hallucinations: hallu, omissions: omit, reason,
    };
  } catch (e) {
    if (e instanceof PyError) return null;
    throw e;
  }
}

export interface ScoreResponse {
  score: unknown[];
  reasoning: unknown;
  [k: string]: unknown;
}

/**
 * `_validate_score1_response`: strips a leading ```` ```json ```` / ```` ``` ```` fence by position (the last three
 * characters are dropped whatever they are), then needs a JSON object with `score` (a list) and `reasoning`.
 */
export function validateScoreResponse(raw: string): [true, ScoreResponse] | [false, string] {
  let content = pyStrip(raw);
  const cps = () => Array.from(content);
  if (content.startsWith('```json')) content = pyStrip(cps().slice(7, -3).join(''));
  else if (content.startsWith('```')) content = pyStrip(cps().slice(3, -3).join(''));
  let parsed: unknown;
  try {
    parsed = pyJsonLoads(content);
  } catch (e) {
    if (e instanceof PyError) return [false, raw];
    throw e;
  }
  if (isDict(parsed) && 'score' in parsed && 'reasoning' in parsed && Array.isArray(parsed.score)) return [true, parsed as ScoreResponse];
  return [false, raw];
}

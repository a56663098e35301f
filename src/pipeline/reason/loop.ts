/**
 * The v1.2 reasoning loop (`Step1XEditPipelineV1P2.__call__` with `enable_reflection_mode`, and
 * `Step1XEditThinker` / `ImageEditEvaluator_EN` of the thinker file), with the model behind `callModel` and the
 * edit behind `edit`, so the same code runs the real Qwen and the scripted replies of v12_loop_scripted.
 *
 *   think      (thinking on) reformat call on the original image; the stripped reply becomes the prompt AND the
 *              instruction every judge sees ("original_prompt"); a reply starting `错误:` aborts
 *   round r    edit(prompt, image) → output; reflect(original image, output, original prompt):
 *                description → scoring (JSON block, score caps) → reflection (tags), each retried up to 20
 *                times, any stage exhausted → the fixed `<#Failed>` reflection;
 *                score1 and score2 (JSON with a `score` list), each up to 20 tries, else scores [0, 0]
 *              format_text: success (`<#Success>`/`<#Others>`) stops; `<#Reflection> X` → next round edits
 *              this OUTPUT with X (unstripped); otherwise the next round edits the ORIGINAL with the
 *              (rewritten) prompt; at most `maxRounds` rounds
 *   final      argmax of min(score1)·min(score2); ties go to a round with `<#Success>`, else to the later one
 */
import { analyzeText, applyScoreCaps, formatText, parseJsonBlock, validateReflection, validateScoreResponse, type ConsistencyResult } from './parsers.js';
import { PyError, pyStrip } from './python.js';
import { MAX_TOKENS_ARG, PROMPTS, type PromptKind, type PromptVars, type ThinkerMessages } from './prompts.js';

export const MAX_RETRIES = 20;
export const FAILED_REFLECTION = '<#Think> The process encountered repeated errors and could not complete.<#Failed>';

export interface ReasonHooks<I> {
  /** One generation of the MLLM (the raw decoded text, before any strip). */
  callModel(messages: ThinkerMessages<I>, maxTokensArg: number): Promise<string>;
  /** One edit round: `prompt` applied to `image`. */
  edit(prompt: string, image: I, round: number): Promise<I>;
  /** Progress: the rewritten instruction, each verdict, each failed parse. */
  onEvent?(e: ReasonEvent): void;
}

export type ReasonEvent =
  | { type: 'rewrite'; prompt: string }
  | { type: 'round'; round: number; prompt: string; editsOriginal: boolean }
  | { type: 'retry'; stage: string; attempt: number; error: string }
  | { type: 'verdict'; round: number; reflection: string; success: boolean; score1: unknown[]; score2: unknown[] };

export interface ScorePair {
  score1: { score: unknown[]; reasoning: unknown; [k: string]: unknown };
  score2: { score: unknown[]; reasoning: unknown; [k: string]: unknown };
}

export interface RoundRecord<I> {
  round: number;
  editPrompt: string;
  editsImage: I;
  output: I;
}

export interface ReasonResult<I> {
  rounds: RoundRecord<I>[];
  reformatPrompt: string | null;
  thinkInfo: string[];
  bestInfo: ScorePair[];
  selectionScores: number[];
  hasSuccess: boolean[];
  finalIndex: number;
  finalImage: I;
  /** MLLM calls made (each is one generation). */
  calls: number;
}

export interface ReasonOptions {
  prompt: string;
  thinking: boolean;
  /** max_try_cnt (default 3). */
  maxRounds?: number;
}

/** Python `min(list)` then the product of the two: numbers only (strings or an empty list raise, as there). */
function minScore(list: unknown[], which: string): number {
  if (!list.length) throw new PyError('ValueError', `min() arg is an empty sequence (${which})`);
  if (!list.every((x) => typeof x === 'number' || typeof x === 'boolean'))
    throw new PyError('TypeError', `${which} ${JSON.stringify(list)}: the selection multiplies the minimum scores, which must be numbers`);
  return Math.min(...list.map(Number));
}

export class ReasonLoop<I> {
  calls = 0;
  /** `maxRetries`: tries per parser (the official 20; fewer only to shorten tests). */
  constructor(private readonly h: ReasonHooks<I>, private readonly maxRetries = MAX_RETRIES) {}

  private async ask(kind: PromptKind, v: PromptVars<I>): Promise<string> {
    this.calls++;
    return this.h.callModel(PROMPTS[kind](v), MAX_TOKENS_ARG[kind]);
  }

  private vars(instruction: string, source: I, target: I, extra: Partial<PromptVars<I>> = {}): PromptVars<I> {
    return { instruction, language: analyzeText(instruction), source, target, description: '', priorScore: '', priorReason: '', ...extra };
  }

  /** Up to MAX_RETRIES attempts of `f`; a PyError (the Python code's raise) is retried, anything else propagates. */
  private async retry<T>(stage: string, f: () => Promise<T>): Promise<T | null> {
    for (let attempt = 1; attempt <= this.maxRetries; attempt++) {
      try {
        return await f();
      } catch (e) {
        if (!(e instanceof PyError)) throw e;
        this.h.onEvent?.({ type: 'retry', stage, attempt, error: e.message });
      }
    }
    return null;
  }

  async think(source: I, instruction: string): Promise<string> {
    const resp = await this.ask('reformat', this.vars(instruction, source, source));
    if (resp.startsWith('错误:')) throw new Error(`thinker: API call failed: ${resp}`);
    return pyStrip(resp);
  }

  /** run_full_pipeline → the reflection text (or the fixed failure text). */
  async reflection(source: I, edited: I, instruction: string): Promise<string> {
    const description = await this.retry('description', async () => {
      const r = await this.ask('description', this.vars(instruction, source, source));
      if (r.startsWith('错误:')) throw new PyError('RuntimeError', `API call failed: ${r}`);
      return pyStrip(r);
    });
    if (description === null) return FAILED_REFLECTION;
    const evaluation = await this.retry<ConsistencyResult>('scoring', async () => {
      const r = await this.ask('scoring', this.vars(instruction, edited, edited, { description }));
      if (r.startsWith('错误:')) throw new PyError('RuntimeError', `API call failed: ${r}`);
      const obj = parseJsonBlock(r);
      if (obj === null) throw new PyError('ValueError', `无法从API响应中解析JSON: ${Array.from(r).slice(0, 200).join('')}...`);
      const res = applyScoreCaps(obj);
      if (res === null) throw new PyError('ValueError', '结构化字段缺失或异常，无法后处理');
      return res;
    });
    if (evaluation === null) return FAILED_REFLECTION;
    const reflection = await this.retry('reflection', async () => {
      const r = await this.ask('reflection', this.vars(instruction, source, edited, {
        priorScore: pyFloatRepr(evaluation.score), priorReason: evaluation.reason,
      }));
      const [ok, cleaned] = validateReflection(r);
      if (!ok) throw new PyError('ValueError', `反思结果格式无效: ${cleaned}`);
      return cleaned;
    });
    return reflection ?? FAILED_REFLECTION;
  }

  /** run_best_pipeline → score1 and score2 (fallback [0, 0] after 20 failed tries each). */
  async best(source: I, edited: I, instruction: string): Promise<ScorePair> {
    const score = (kind: 'score1' | 'score2') => this.retry(kind, async () => {
      const r = await this.ask(kind, this.vars(instruction, source, edited));
      const v = validateScoreResponse(r);
      if (!v[0]) throw new PyError('ValueError', `反思结果格式无效: ${v[1]}`);
      return v[1];
    });
    const s1 = (await score('score1')) ?? { score: [0, 0], reasoning: 'score1 evaluation failed after 20 attempts.' };
    const s2 = (await score('score2')) ?? { score: [0, 0], reasoning: 'score2 evaluation failed after 20 attempts.' };
    return { score1: s1, score2: s2 };
  }

  async run(original: I, o: ReasonOptions): Promise<ReasonResult<I>> {
    const maxRounds = o.maxRounds ?? 3;
    const reformat = o.thinking ? await this.think(original, o.prompt) : o.prompt;
    if (o.thinking) this.h.onEvent?.({ type: 'rewrite', prompt: reformat });
    const judged = reformat;
    let prompt = reformat, image = original, success = false;
    const rounds: RoundRecord<I>[] = [], thinkInfo: string[] = [], bestInfo: ScorePair[] = [];
    for (let r = 0; !success && r < maxRounds; r++) {
      this.h.onEvent?.({ type: 'round', round: r, prompt, editsOriginal: image === original });
      const out = await this.h.edit(prompt, image, r);
      rounds.push({ round: r, editPrompt: prompt, editsImage: image, output: out });
      const reflection = await this.reflection(original, out, judged);
      const best = await this.best(original, out, judged);
      const [ok, refine] = formatText(reflection);
      success = ok;
      thinkInfo.push(reflection);
      bestInfo.push(best);
      this.h.onEvent?.({ type: 'verdict', round: r, reflection, success: ok, score1: best.score1.score, score2: best.score2.score });
      if (!ok) {
        if (refine !== null) {
          prompt = refine;
          image = out;
        } else {
          image = original;
          prompt = reformat;
        }
      }
    }
    const selectionScores = bestInfo.map((b) => minScore(b.score1.score, 'score1') * minScore(b.score2.score, 'score2'));
    const hasSuccess = thinkInfo.map((t) => t.includes('<#Success>'));
    let bestIdx = 0, max = -1, bestSuccess = false;
    selectionScores.forEach((s, i) => {
      if (s > max) {
        bestIdx = i;
        max = s;
        bestSuccess = hasSuccess[i];
      } else if (s === max) {
        if (hasSuccess[i] && !bestSuccess) {
          bestIdx = i;
          bestSuccess = true;
        } else if (hasSuccess[i] === bestSuccess) bestIdx = i;
      }
    });
    return {
      rounds, reformatPrompt: o.thinking ? reformat : null, thinkInfo, bestInfo, selectionScores, hasSuccess,
      finalIndex: bestIdx, finalImage: rounds[bestIdx].output, calls: this.calls,
    };
  }
}

/** Python `repr(float)` for the reflection prompt's prior score (5.0 → "5.0", 8.8889 → "8.8889"). */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const a = Math.abs(x);
  if (a >= 1e16 || a < 1e-4) {
    const [m, e] = x.toExponential().split('e');
    const n = Number(e);
    return `${m}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  }
  return String(x);
}

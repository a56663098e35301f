/**
 * The v1.2 reasoning edit (`step1x edit --think / --reflect`): ReasonLoop (reason/loop.ts) with the model's own
 * text encoder as the thinker (QwenThinkerClient: the official sampling chain, seeded from the request's
 * seed, 128 new tokens per call) and the v1.2 edit (v12-edit.ts) behind its `edit` hook.
 *
 *   --think            one rewrite call, then one edit of the photo with the rewritten instruction
 *   --reflect          rounds of edit → judge (description, scoring, reflection, score1, score2) until a
 *                      `<#Success>`/`<#Others>` verdict or `maxRounds`; the final image is the loop's selection
 *   --think --reflect  the rewrite first, then the rounds (the judges see the rewritten instruction)
 *
 * Round r's edit draws its noise and posterior ε from seed + r (round 0 is the plain edit of the same seed).
 * The thinker is the edit's own text encoder, not a second copy: `model` (v12-run.ts) runs each call on the
 * Qwen the embed stage uses, from the same model host under the same plan (plan.ts stage 'reason'): kept
 * resident with the other models when they all fit, else loaded for the thinking calls and freed before the
 * VAE or the DiT loads.
 */
import type { RgbImage } from '../io/resize.js';
import type { QwenTokenizer } from '../models/qwen25vl/tokenizer.js';
import { ReasonLoop, type ReasonEvent } from './reason/loop.js';
import { analyzeText } from './reason/parsers.js';
import { PROMPTS, type PromptKind } from './reason/prompts.js';
import { QwenThinkerClient, type ThinkerModel } from './reason/client.js';
import { renderThinkerChat, THINKER_MAX_NEW_TOKENS } from './reason/thinker.js';

export interface ReasonEditOptions {
  prompt: string;
  think: boolean;
  reflect: boolean;
  /** max_try_cnt (default 3). */
  maxRounds: number;
  seed: number;
  /** Greedy thinker (no sampling); the default samples with the official chain. */
  greedy?: boolean;
  /** Test limits (the official 128 new tokens and 20 tries per parser otherwise). */
  maxNewTokens?: number;
  maxRetries?: number;
  onEvent?(e: ReasonEvent): void;
  /** Each generated token of a thinker call: the call's kind, its text so far and its token count. */
  onToken?(kind: string, textSoFar: string, tokens: number): void;
}

export interface ReasonRound {
  round: number;
  prompt: string;
  /** 'original' or 'round<k>' (the output this round edits). */
  edits: string;
  image: RgbImage;
  reflection?: string;
  success?: boolean;
  score1?: unknown[];
  score2?: unknown[];
  selectionScore?: number;
}

export interface ReasonEditResult {
  rewritten: string | null;
  rounds: ReasonRound[];
  finalIndex: number;
  /** Thinker generations, their prompt tokens (prefill) and generated tokens (decode steps). */
  calls: number;
  promptTokens: number;
  generatedTokens: number;
}

/** `edit(prompt, image, round)`: one v1.2 edit (the caller's seed handling and progress). */
export type RoundEdit = (prompt: string, image: RgbImage, round: number) => Promise<RgbImage>;

/**
 * Text tokens of the longest prompt this request's thinker can send (the plan's `reason.textTokens`): each
 * prompt it will use rendered with the instruction and no generated text, plus 128 tokens for each
 * generated text a judge's prompt may quote (the rewritten instruction, the description, the prior reason).
 */
export function thinkerTextTokens(tok: QwenTokenizer, instruction: string, o: { reflect: boolean }): number {
  if (!tok.chatTemplate) return 0; // the first call says what is missing
  const kinds: PromptKind[] = o.reflect ? ['reformat', 'description', 'scoring', 'reflection', 'score1', 'score2'] : ['reformat'];
  const vars = { instruction, language: analyzeText(instruction), source: null, target: null, description: '', priorScore: '', priorReason: '' };
  const longest = Math.max(...kinds.map((k) => tok.encode(renderThinkerChat(tok.chatTemplate!, PROMPTS[k](vars))).length));
  return longest + (o.reflect ? 3 * THINKER_MAX_NEW_TOKENS : 0);
}

/** `model`: the thinker's calls run on it (a hosted Qwen, reason/client.ts ThinkerModel). */
export async function runReasonEdit(thinker: { tok: QwenTokenizer; model: ThinkerModel }, photo: RgbImage, o: ReasonEditOptions, edit: RoundEdit): Promise<ReasonEditResult> {
  const client = new QwenThinkerClient(thinker.tok, thinker.model, { seed: o.seed, greedy: o.greedy, maxNewTokens: o.maxNewTokens, onToken: o.onToken });
  const names = new Map<RgbImage, string>([[photo, 'original']]);
  const rounds: ReasonRound[] = [];
  const loop = new ReasonLoop<RgbImage>({
    callModel: (m) => client.callModel(m),
    async edit(prompt, image, round) {
      const out = await edit(prompt, image, round);
      names.set(out, `round${round}`);
      rounds.push({ round, prompt, edits: names.get(image) ?? '?', image: out });
      return out;
    },
    onEvent: (e) => {
      if (e.type === 'verdict') Object.assign(rounds[e.round], { reflection: e.reflection, success: e.success, score1: e.score1, score2: e.score2 });
      o.onEvent?.(e);
    },
  }, o.maxRetries);
  let rewritten: string | null = null, finalIndex = 0;
  if (o.reflect) {
    const r = await loop.run(photo, { prompt: o.prompt, thinking: o.think, maxRounds: o.maxRounds });
    rewritten = r.reformatPrompt;
    r.selectionScores.forEach((s, i) => (rounds[i].selectionScore = s));
    finalIndex = r.finalIndex;
  } else {
    rewritten = o.think ? await loop.think(photo, o.prompt) : null;
    if (rewritten !== null) o.onEvent?.({ type: 'rewrite', prompt: rewritten });
    const prompt = rewritten ?? o.prompt;
    o.onEvent?.({ type: 'round', round: 0, prompt, editsOriginal: true });
    const out = await edit(prompt, photo, 0);
    rounds.push({ round: 0, prompt, edits: 'original', image: out });
  }
  const sum = (f: (c: (typeof client.log)[number]) => number) => client.log.reduce((a, c) => a + f(c), 0);
  return { rewritten, rounds, finalIndex, calls: client.log.length, promptTokens: sum((c) => c.promptTokens), generatedTokens: sum((c) => c.newTokens) };
}

/** A model's text on one progress line: whitespace runs (newlines too) as one space. */
const oneLine = (t: string) => t.replace(/\s+/g, ' ').trim();

/** One line per event for the progress reporter. */
export function describeReasonEvent(e: ReasonEvent): string {
  switch (e.type) {
    case 'rewrite':
      return `rewritten instruction: ${oneLine(e.prompt)}`;
    case 'round':
      return `round ${e.round}: editing the ${e.editsOriginal ? 'original' : 'previous output'} with ${JSON.stringify(e.prompt)}`;
    case 'retry':
      return `${e.stage}: reply not usable (try ${e.attempt}): ${oneLine(e.error)}`;
    case 'verdict': {
      const tag = /<#(Success|Reflection|Failed|Others)>/.exec(e.reflection)?.[1] ?? 'Failed';
      return `round ${e.round}: verdict ${tag}, score1 ${JSON.stringify(e.score1)}, score2 ${JSON.stringify(e.score2)}`;
    }
  }
}

/**
 * Run `work`, yielding what it emits as it goes (callbacks cannot yield from inside an async generator):
 * the loop's events reach the caller's progress channel while the rounds run.
 */
export async function* pumpEvents<P, T>(work: (emit: (p: P) => void) => Promise<T>): AsyncGenerator<P, T> {
  const queue: P[] = [];
  let wake: (() => void) | null = null, finished = false, failed = false, error: unknown, value: T | undefined;
  const emit = (p: P) => {
    queue.push(p);
    wake?.();
  };
  void work(emit).then(
    (v) => void (value = v),
    (e) => void ((failed = true), (error = e)),
  ).finally(() => {
    finished = true;
    wake?.();
  });
  while (!finished || queue.length) {
    if (queue.length) {
      yield queue.shift()!;
      continue;
    }
    await new Promise<void>((r) => (wake = r));
    wake = null;
  }
  if (failed) throw error;
  return value as T;
}

/** The --json record of what the reasoning did (images left out). */
export function reasonSummary(r: ReasonEditResult, o: { think: boolean; reflect: boolean; maxRounds: number }): Record<string, unknown> {
  return {
    think: o.think, reflect: o.reflect, max_rounds: o.reflect ? o.maxRounds : 1,
    rewritten_instruction: r.rewritten,
    rounds: r.rounds.map((x) => ({
      round: x.round, prompt: x.prompt, edits: x.edits,
      ...(x.reflection !== undefined ? { verdict: x.reflection, success: x.success, score1: x.score1, score2: x.score2, selection_score: x.selectionScore } : {}),
    })),
    final_round: r.finalIndex,
    mllm_calls: r.calls, mllm_prompt_tokens: r.promptTokens, mllm_generated_tokens: r.generatedTokens,
  };
}

/** The PNG parameters of a reasoning edit. */
export function reasonParameters(r: ReasonEditResult, o: { think: boolean; reflect: boolean; maxRounds: number; maxNewTokens?: number; maxRetries?: number }): Record<string, string> {
  const p: Record<string, string> = {
    reasoning: [o.think && 'think', o.reflect && `reflect (max ${o.maxRounds} rounds)`].filter(Boolean).join(' + '),
    ...(r.rewritten !== null ? { 'rewritten-instruction': r.rewritten } : {}),
    rounds: JSON.stringify(r.rounds.map((x) => ({ round: x.round, prompt: x.prompt, edits: x.edits, verdict: x.reflection, score1: x.score1, score2: x.score2 }))),
    'final-round': String(r.finalIndex),
    'mllm-calls': `${r.calls} (${r.promptTokens} prompt tokens, ${r.generatedTokens} generated)`,
  };
  if (o.maxNewTokens !== undefined || o.maxRetries !== undefined)
    p['thinker-limits'] = `max new tokens ${o.maxNewTokens ?? 128}, tries per parser ${o.maxRetries ?? 20} (test limits, not the official)`;
  return p;
}

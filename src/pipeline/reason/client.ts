/**
 * The thinker's MLLM on our GPU runtime: the text encoder of a v1.2 model directory (text_encoder/ weights,
 * processor/ tokenizer and chat template) as the `callModel` of ReasonLoop. Each call is one `call_model`
 * (thinker.ts): prompt → images → greedy or seeded sampling (128 new tokens, stop 151645) → decoded, stripped
 * text. In sampling mode call k of a request draws from its own xoshiro128** stream seeded with
 * (seed·1000003 + k) mod 2^53, so a `--seed` reproduces the whole transcript. `onToken` streams the text as it is generated (for a terminal).
 *
 * Where the model comes from is the caller's: `withModel(fn)` runs one call with a generator. A v1.2 edit
 * passes the edit's own hosted Qwen (v12-run.ts: the embed stage's model, under the one plan); `load` gives a
 * client its own copy (tests and golden kinds).
 */
import type { Gpu } from '../../runtime/gpu.js';
import type { RgbImage } from '../../io/resize.js';
import { QwenVL, type QwenLoadOptions } from '../../models/qwen25vl/model.js';
import { QwenGenerator } from '../../models/qwen25vl/generate.js';
import { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import type { ThinkerMessages } from './prompts.js';
import { callThinker, type ThinkerCallResult } from './thinker.js';

export interface ThinkerClientOptions {
  /** true: do_sample=False (the goldens); false (default): the official sampling chain with `seed`. */
  greedy?: boolean;
  seed?: number;
  /** Default 128 (the contract); lower only to shorten tests. */
  maxNewTokens?: number;
  /** Each call's text so far, after every token (decoded without special tokens). */
  onToken?(kind: string, textSoFar: string, tokens: number): void;
}

export interface CallRecord {
  kind: string;
  promptTokens: number;
  newTokens: number;
  stoppedBy: string;
  ms: number;
  text: string;
}

/** Runs `fn` with a generator of the thinker's model (loaded, or taken from a model host, for the call). */
export type ThinkerModel = <R>(fn: (gen: QwenGenerator) => Promise<R>) => Promise<R>;

export class QwenThinkerClient {
  readonly log: CallRecord[] = [];
  private calls = 0;
  constructor(
    readonly tok: QwenTokenizer,
    private readonly withModel: ThinkerModel,
    private readonly o: ThinkerClientOptions = {},
    private readonly close?: () => Promise<void>,
  ) {}

  /** A client on its own copy of the text encoder (`o.load`: its weight options), freed by dispose(). */
  static async load(g: Gpu, textEncoderDir: string, tokenizerDir: string, o: ThinkerClientOptions & { load?: QwenLoadOptions } = {}): Promise<QwenThinkerClient> {
    const tok = QwenTokenizer.load(tokenizerDir);
    const qwen = await QwenVL.load(g, textEncoderDir, o.load);
    let gen: QwenGenerator;
    try {
      gen = await QwenGenerator.create(g, qwen);
    } catch (e) {
      await qwen.dispose();
      throw e;
    }
    const close = async () => {
      gen.dispose();
      await qwen.dispose();
    };
    return new QwenThinkerClient(tok, (fn) => fn(gen), o, close);
  }

  /** One call_model (ReasonHooks.callModel). */
  async callModel(m: ThinkerMessages<RgbImage>): Promise<string> {
    const t0 = performance.now();
    // one seed per call, derived from the request's seed and the call's position: reproducible, independent draws
    // (a call the host retries after GPU out-of-memory draws the same again)
    const seed = Number((BigInt(this.o.seed ?? 0) * 1000003n + BigInt(this.calls++)) % (1n << 53n));
    const r: ThinkerCallResult = await this.withModel((gen) => {
      const ids: number[] = [];
      const onStep = this.o.onToken
        ? (_s: number, t: number) => {
            ids.push(t);
            this.o.onToken!(m.kind, this.tok.decode(ids, true), ids.length);
          }
        : undefined;
      return callThinker(gen, this.tok, m, { greedy: !!this.o.greedy, seed, onStep, maxNewTokens: this.o.maxNewTokens });
    });
    this.log.push({
      kind: m.kind, promptTokens: r.generation.promptTokens, newTokens: r.generation.ids.length,
      stoppedBy: r.generation.stoppedBy, ms: performance.now() - t0, text: r.text,
    });
    return r.text;
  }

  /** Frees the client's own model (`load`); a hosted model stays with its host. */
  async dispose(): Promise<void> {
    await this.close?.();
  }
}

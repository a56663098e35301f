/**
 * The Qwen2 tokenizer of a Qwen2.5-VL model directory, via `@huggingface/tokenizers` (pure JS:
 * NFC → Qwen2 regex split → byte-level BPE, added/special tokens split out first). Both merges
 * formats of tokenizer.json ("a b" strings and ["a", "b"] pairs) are accepted by the library.
 *
 * Files read from the directory:
 *   tokenizer.json          (required)
 *   tokenizer_config.json   (optional; passed to the library as its config)
 *   chat_template.json      (optional; `{"chat_template": "..."}`), else chat_template.jinja (the template
 *                           itself, transformers >= 4.50 save_pretrained), else tokenizer_config.chat_template
 */
import { existsSync } from 'node:fs';
import { readCheckedBytes, readCheckedText } from '../../io/safe-read.js';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Tokenizer } from '@huggingface/tokenizers';
import { Step1xError, ExitCode } from '../../errors.js';

/** Special token ids of Qwen2 / Qwen2.5-VL (real vocabulary) that Step1X relies on. */
export const QWEN_IDS = {
  endoftext: 151643,
  imStart: 151644,
  imEnd: 151645,
  visionStart: 151652,
  visionEnd: 151653,
  visionPad: 151654,
  imagePad: 151655,
  videoPad: 151656,
  leftQuote: 2073, // “
  rightQuote: 854, // ”
} as const;

export class QwenTokenizer {
  private constructor(
    private readonly tok: Tokenizer,
    /** the Jinja chat template, when the directory has one */
    readonly chatTemplate: string | undefined,
    readonly dir: string,
  ) {}

  /**
   * Load from a model directory (or a direct path to tokenizer.json). A gzip-compressed
   * `tokenizer.json.gz` is accepted in place of `tokenizer.json` (the in-repo test model ships one).
   */
  static load(pathOrDir: string): QwenTokenizer {
    const direct = /\.json(\.gz)?$/.test(pathOrDir);
    let file = direct ? pathOrDir : join(pathOrDir, 'tokenizer.json');
    const dir = direct ? join(pathOrDir, '..') : pathOrDir;
    if (!existsSync(file) && existsSync(`${file}.gz`)) file = `${file}.gz`;
    if (!existsSync(file))
      throw new Step1xError(`tokenizer: ${file} not found (expected the Qwen2.5-VL model directory)`, ExitCode.WEIGHTS);
    const tj = readJson(file);
    if (!tj || typeof tj !== 'object' || !tj.model || tj.model.type !== 'BPE')
      throw new Step1xError(`tokenizer: ${file} is not a BPE tokenizer.json (model.type=${tj?.model?.type})`, ExitCode.WEIGHTS);
    const cfgFile = join(dir, 'tokenizer_config.json');
    const cfg = existsSync(cfgFile) ? readJson(cfgFile) : {};
    let template: string | undefined;
    const ctFile = join(dir, 'chat_template.json');
    const jinja = join(dir, 'chat_template.jinja');
    if (existsSync(ctFile)) template = readJson(ctFile).chat_template;
    else if (existsSync(jinja)) template = readCheckedText(jinja, MAX_TOKENIZER_FILE, 'chat template:', ExitCode.WEIGHTS); // length bound: prompt.ts
    else if (typeof cfg.chat_template === 'string') template = cfg.chat_template;
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(tj, cfg);
    } catch (e) {
      throw new Step1xError(`tokenizer: cannot build a tokenizer from ${file}: ${(e as Error).message}`, ExitCode.WEIGHTS);
    }
    const t = new QwenTokenizer(tok, template, dir);
    // Step1X hard-codes these ids; a tokenizer that disagrees would silently break the prompt layout.
    for (const [s, id] of [['<|vision_end|>', QWEN_IDS.visionEnd], ['<|image_pad|>', QWEN_IDS.imagePad], ['“', QWEN_IDS.leftQuote], ['”', QWEN_IDS.rightQuote]] as const) {
      const got = t.encode(s);
      if (got.length !== 1 || got[0] !== id)
        throw new Step1xError(`tokenizer: ${file} encodes ${JSON.stringify(s)} as [${got}], Step1X expects ${id}`, ExitCode.WEIGHTS);
    }
    return t;
  }

  /** Token ids of `text`; special tokens written in the text (`<|im_start|>` ...) are recognised. */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  tokens(text: string): string[] {
    return this.tok.encode(text, { add_special_tokens: false }).tokens;
  }

  decode(ids: ArrayLike<number>, skipSpecial = false): string {
    return this.tok.decode(Array.from(ids), { skip_special_tokens: skipSpecial });
  }

  /** vocabulary lookup of a token string in its byte-level form (e.g. 'Ġthe'), or a special token */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
}

/** tokenizer.json of Qwen2.5-VL is 7 MB: these bounds leave room and stop a bomb in bounded memory. */
const MAX_TOKENIZER_FILE = 64 << 20;
const MAX_TOKENIZER_INFLATED = 128 << 20;

function readJson(file: string): any {
  try {
    const raw = readCheckedBytes(file, MAX_TOKENIZER_FILE, 'tokenizer:', ExitCode.WEIGHTS);
    let text: Buffer = raw;
    if (file.endsWith('.gz')) {
      try {
        text = gunzipSync(raw, { maxOutputLength: MAX_TOKENIZER_INFLATED });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || /maxOutputLength|too large/i.test((e as Error).message))
          throw new Step1xError(`tokenizer: ${file} inflates to more than ${MAX_TOKENIZER_INFLATED >> 20} MiB (a decompression bomb?); refused`, ExitCode.WEIGHTS);
        throw e;
      }
    }
    return JSON.parse(text.toString('utf8'));
  } catch (e) {
    if (e instanceof Step1xError) throw e;
    throw new Step1xError(`tokenizer: cannot read ${file}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
}

/**
 * Step1X-Edit's prompt layout (modules/conditioner.py `Qwen25VL_7b_Embedder.forward`, commit 570eba6):
 *
 *  1. messages = [user: [text(PREFIX), image, text(caption)]] through the Qwen2.5-VL chat template with
 *     add_generation_prompt and add_vision_id → one string (default system turn inserted, items joined
 *     with no separator, `Picture 1: ` before the vision block);
 *  2. "old" ids = the processor's tokenisation with `<|image_pad|>` expanded to the merged-token count;
 *  3. the inner `split_string(text)`: “ ” ' → ", a `"` at code-point index > 155 toggles quote mode,
 *     inside quotes every character c becomes its own piece “c”; each piece is tokenised alone and
 *     its leading 2073 (“) / trailing 854 (”) stripped only when both are present;
 *  4. input_ids = old[: first <|vision_end|>] ++ new[first <|vision_end|> :];
 *  5. attention_mask = input_ids > 0 (so `!` = id 0 is masked);
 *  6. the embedder keeps hidden states [217, 217 + min(640, L − 217)).
 */
import { runInNewContext } from 'node:vm';
import { Environment, Template } from '@huggingface/jinja';
import { Step1xError, ExitCode } from '../../errors.js';
import { QWEN_IDS, type QwenTokenizer } from './tokenizer.js';

/** `Qwen25VL_7b_PREFIX` (the two `\n` escapes before real line breaks give `\n\n` twice). */
export const STEP1X_PREFIX =
  'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:\n' +
  '- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.\n' +
  '- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.\n\n' +
  'Here are examples of how to transform or refine prompts:\n' +
  '- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n' +
  '- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.\n\n' +
  'Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:\n' +
  'User Prompt:';

export const STEP1X_MAX_LENGTH = 640;
export const STEP1X_DROP_PREFIX = 217;
const QUOTE_INDEX = 155;

/** A chat template comes from the model directory: untrusted. The real Qwen2.5-VL one has ~1 KB. */
export const MAX_TEMPLATE_CHARS = 64 << 10;
/** Elements all `range()` calls of one rendering may produce together (loops over loops included). */
export const MAX_TEMPLATE_RANGE = 10_000;
const MAX_TEMPLATE_MS = 2000;
const MAX_CHAT_CHARS = 4 << 20;

/**
 * Render with bounds on work, time and output: `range()` draws from one budget (so `range(1e8)` or nested
 * loops fail at once instead of exhausting the heap), the whole rendering runs under a vm timeout (V8
 * terminates it), and the result may not exceed MAX_CHAT_CHARS. Any failure is one line, exit 4.
 */
function renderBounded(t: Template, items: Record<string, unknown>): string {
  const bad = (why: string) => new Step1xError(`chat template: ${why}; the model directory's chat_template is not usable`, ExitCode.WEIGHTS);
  let budget = MAX_TEMPLATE_RANGE;
  const range = (start: number, stop?: number, step = 1) => {
    if (stop === undefined) [start, stop] = [0, start];
    if (![start, stop, step].every(Number.isFinite) || step === 0) throw new Error('range() needs finite numbers and a non-zero step');
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if ((budget -= n) < 0) throw bad(`range() asks for more than ${MAX_TEMPLATE_RANGE} elements in all`);
    return Array.from({ length: n }, (_, i) => start + i * step);
  };
  let out: unknown;
  try {
    // the library declares its own unbounded `range` global; swap ours in while this (synchronous) render runs
    const proto = Environment.prototype as unknown as { set(name: string, v: unknown): unknown };
    const set = proto.set;
    proto.set = function (this: unknown, name: string, v: unknown) {
      return set.call(this, name, name === 'range' ? range : v);
    };
    try {
      out = runInNewContext('render()', { render: () => t.render(items) }, { timeout: MAX_TEMPLATE_MS });
    } finally {
      proto.set = set;
    }
  } catch (e) {
    if (e instanceof Step1xError) throw e;
    const m = (e as Error)?.message ?? String(e);
    throw bad(/timed out/i.test(m) ? `rendering took more than ${MAX_TEMPLATE_MS / 1000} s` : `rendering failed: ${m}`);
  }
  if (typeof out !== 'string') throw bad('rendering gave no text');
  if (out.length > MAX_CHAT_CHARS) throw bad(`rendering gave ${out.length} characters, more than ${MAX_CHAT_CHARS}`);
  return out;
}

/**
 * The chat string. With a Jinja template (chat_template.json) it is rendered exactly as transformers
 * does; without one the Qwen2.5-VL template's output is built by hand (identical for this message).
 */
export function renderStep1xChat(caption: string, prefix = STEP1X_PREFIX, template?: string): string {
  if (template) {
    if (template.length > MAX_TEMPLATE_CHARS) throw new Step1xError(`chat template: ${template.length} characters, more than the ${MAX_TEMPLATE_CHARS} a chat template may have`, ExitCode.WEIGHTS);
    let t: Template;
    try {
      t = new Template(template);
    } catch (e) {
      throw new Step1xError(`chat template: cannot parse: ${(e as Error).message}`, ExitCode.WEIGHTS);
    }
    return renderBounded(t, {
      messages: [{ role: 'user', content: [{ type: 'text', text: prefix }, { type: 'image', image: 'ref' }, { type: 'text', text: caption }] }],
      add_generation_prompt: true,
      add_vision_id: true,
    });
  }
  return (
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n' +
    `${prefix}Picture 1: <|vision_start|><|image_pad|><|vision_end|>${caption}<|im_end|>\n<|im_start|>assistant\n`
  );
}

/** The inner `split_string` of `forward()`; indices are Unicode code points as in Python. */
export function splitString(s: string): string[] {
  s = s.replace(/“/g, '"').replace(/”/g, '"').replace(/'/g, '"');
  const result: string[] = [];
  let inQuotes = false;
  let temp = '';
  let idx = 0;
  for (const ch of s) {
    if (ch === '"' && idx > QUOTE_INDEX) {
      temp += ch;
      if (!inQuotes) {
        result.push(temp);
        temp = '';
      }
      inQuotes = !inQuotes;
    } else if (inQuotes) {
      result.push('“' + ch + '”');
    } else {
      temp += ch;
    }
    idx++;
  }
  if (temp) result.push(temp);
  return result;
}

export interface Step1xPromptOptions {
  prefix?: string;
  /** Jinja chat template; default: the tokenizer directory's, else the hand-built string */
  template?: string | null;
  maxLength?: number;
  dropPrefix?: number;
}

export interface Step1xPrompt {
  /** full sequence fed to Qwen2.5-VL [L] */
  inputIds: Int32Array;
  /** (inputIds > 0) [L] */
  attentionMask: Int32Array;
  /** the chat string before image-pad expansion */
  text: string;
  /** the embedder keeps positions [keepStart, keepStart + keepLen) of the last hidden state */
  keepStart: number;
  keepLen: number;
  /** index of `<|vision_start|>`; the image tokens follow it */
  visionStart: number;
}

function firstIndex(ids: ArrayLike<number>, id: number): number {
  for (let i = 0; i < ids.length; i++) if (ids[i] === id) return i;
  return -1;
}

/** Step1X's input_ids / attention_mask for one caption and an image with `imagePadCount` merged tokens. */
export function buildStep1xInputIds(
  tokenizer: QwenTokenizer,
  caption: string,
  imagePadCount: number,
  opts: Step1xPromptOptions = {},
): Step1xPrompt {
  if (!Number.isInteger(imagePadCount) || imagePadCount < 1)
    throw new Step1xError(`buildStep1xInputIds: imagePadCount=${imagePadCount} must be a positive integer`, ExitCode.USAGE);
  const template = opts.template === null ? undefined : (opts.template ?? tokenizer.chatTemplate);
  const text = renderStep1xChat(caption, opts.prefix ?? STEP1X_PREFIX, template);

  // the processor replaces each <|image_pad|> by imagePadCount copies before tokenising
  const pad = '<|image_pad|>';
  const at = text.indexOf(pad);
  if (at < 0) throw new Step1xError('chat template produced no <|image_pad|>', ExitCode.WEIGHTS);
  const expanded = text.slice(0, at) + pad.repeat(imagePadCount) + text.slice(at + pad.length);
  const oldIds = tokenizer.encode(expanded);

  const newIds: number[] = [];
  for (const piece of splitString(text)) {
    const ids = tokenizer.encode(piece);
    if (ids.length >= 2 && ids[0] === QWEN_IDS.leftQuote && ids[ids.length - 1] === QWEN_IDS.rightQuote)
      for (let i = 1; i < ids.length - 1; i++) newIds.push(ids[i]);
    else for (const id of ids) newIds.push(id);
  }

  const idx1 = firstIndex(oldIds, QWEN_IDS.visionEnd);
  const idx2 = firstIndex(newIds, QWEN_IDS.visionEnd);
  if (idx1 < 0 || idx2 < 0)
    throw new Step1xError(`prompt layout: <|vision_end|> (${QWEN_IDS.visionEnd}) missing after quote re-tokenisation`, ExitCode.USAGE);
  const L = idx1 + (newIds.length - idx2);
  const inputIds = new Int32Array(L);
  for (let i = 0; i < idx1; i++) inputIds[i] = oldIds[i];
  for (let i = idx2; i < newIds.length; i++) inputIds[idx1 + i - idx2] = newIds[i];
  const attentionMask = new Int32Array(L);
  for (let i = 0; i < L; i++) attentionMask[i] = inputIds[i] > 0 ? 1 : 0;

  const keepStart = opts.dropPrefix ?? STEP1X_DROP_PREFIX;
  const keepLen = Math.max(0, Math.min(opts.maxLength ?? STEP1X_MAX_LENGTH, L - keepStart));
  return { inputIds, attentionMask, text, keepStart, keepLen, visionStart: firstIndex(inputIds, QWEN_IDS.visionStart) };
}

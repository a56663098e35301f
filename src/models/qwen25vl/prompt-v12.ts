/**
 * Step1X-Edit v1.2's prompt (the fork's pipeline_step1x_edit_v1p2.py `_get_qwenvl_embeds`, c69df6bdf2f0;
 * ../shared/golden/README.md "Generator version 3"):
 *
 *  1. messages = [user: [text(EDIT_PREFIX + " " + prompt), image]] (text BEFORE the image) through the chat
 *     template with add_vision_id and the generation prompt;
 *  2. the chat text is split at the special tokens (each its own part), then each plain part at quotes:
 *     inside "…" or “…” every character is its own segment (text_mask 1); the opening quote stays in the
 *     preceding segment, the closing quote starts the next one; `"` closes only `"`, `“` only `”`;
 *     apostrophes are no quotes; a `“` at the very start of a part (empty buffer) is dropped; an unclosed
 *     quote turns back into plain text of its own part only;
 *  3. every segment is tokenised on its own (no BPE merges across borders), `<|image_pad|>` expanded to
 *     the merged-token count;
 *  4. the first 90 tokens are dropped (the kept span starts at the prefix's last `:`), at most 2048 kept,
 *     no padding.
 */
import { Template } from '@huggingface/jinja';
import { ExitCode, Step1xError } from '../../errors.js';
import { QWEN_IDS, type QwenTokenizer } from './tokenizer.js';

/** The fork's EDIT_PREFIX (ends with "The editing instruction is:"). */
export const V12_EDIT_PREFIX =
  'Given a reference image and a user editing instruction.\n' +
  'You need to understand the information of the reference image and the content of the editing instruction,\n' +
  'and then generate a detailed description of the edited target image based on the reference image and the editing instruction. \n' +
  'The description should include the requirements in the editing instruction and try to closely match the content of the target image.\n' +
  'The editing instruction is:';
export const V12_DROP_PREFIX = 90;
export const V12_MAX_LENGTH = 2048;

/** The 22 special tokens of Qwen2.5 (ids 151643 … 151664) the chat text is split at. */
export const QWEN_SPECIAL_TOKENS = [
  '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>', '<|box_start|>', '<|box_end|>',
  '<|quad_start|>', '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>',
  '<tool_call>', '</tool_call>', '<|fim_prefix|>', '<|fim_middle|>', '<|fim_suffix|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>',
];

export interface V12Segment {
  text: string;
  inQuotation: boolean;
}

/** The chat text of a v1.2 edit prompt (`prompt` "" for the negative one). */
export function renderV12Chat(prompt: string, template: string): string {
  let t: Template;
  try {
    t = new Template(template);
  } catch (e) {
    throw new Step1xError(`chat template: cannot parse: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  return t.render({
    messages: [{ role: 'user', content: [{ type: 'text', text: `${V12_EDIT_PREFIX} ${prompt}` }, { type: 'image', image: 'ref' }] }],
    add_generation_prompt: true,
    add_vision_id: true,
  });
}

const CLOSE: Record<string, string> = { '"': '"', '“': '”' };

/** Step 2 for one plain part (no special token in it). */
function splitPart(part: string): V12Segment[] {
  const out: V12Segment[] = [];
  let buf = '';
  let i = 0;
  const chars = [...part];
  while (i < chars.length) {
    const c = chars[i];
    const close = CLOSE[c];
    if (close === undefined) {
      buf += c;
      i++;
      continue;
    }
    const end = chars.indexOf(close, i + 1);
    if (end < 0) {
      // unclosed: the rest of this part is plain text
      buf += chars.slice(i).join('');
      break;
    }
    if (!(c === '“' && buf === '')) buf += c; // a “ with nothing before it in the part is dropped
    if (buf) out.push({ text: buf, inQuotation: false });
    for (const q of chars.slice(i + 1, end)) out.push({ text: q, inQuotation: true });
    buf = close; // the closing quote starts the next segment
    i = end + 1;
  }
  if (buf) out.push({ text: buf, inQuotation: false });
  return out;
}

/** Steps 1–2: the segments of a chat text, special tokens each a segment of their own. */
export function splitV12Segments(chat: string): V12Segment[] {
  const re = new RegExp(QWEN_SPECIAL_TOKENS.map((s) => s.replace(/[|.*+?^${}()[\]\\/]/g, '\\$&')).join('|'), 'g');
  const out: V12Segment[] = [];
  let at = 0;
  for (const m of chat.matchAll(re)) {
    if (m.index! > at) out.push(...splitPart(chat.slice(at, m.index)));
    out.push({ text: m[0], inQuotation: false });
    at = m.index! + m[0].length;
  }
  if (at < chat.length) out.push(...splitPart(chat.slice(at)));
  return out;
}

export interface V12Prompt {
  chat: string;
  segments: V12Segment[];
  /** every token of the chat [L] (image pads expanded) and its text_mask (1 inside quotes) */
  inputIds: Int32Array;
  textMask: Int32Array;
  /** the kept span [keepStart, keepStart + keepLen) */
  keepStart: number;
  keepLen: number;
}

/** Steps 1–4 for one prompt and an image of `imagePadCount` merged tokens. */
export function buildV12InputIds(tokenizer: QwenTokenizer, prompt: string, imagePadCount: number): V12Prompt {
  if (!Number.isInteger(imagePadCount) || imagePadCount < 1) throw new Step1xError(`buildV12InputIds: imagePadCount=${imagePadCount} must be a positive integer`, ExitCode.USAGE);
  const template = tokenizer.chatTemplate;
  if (!template) throw new Step1xError(`tokenizer ${tokenizer.dir}: no chat template (chat_template.jinja); the v1.2 prompt needs it`, ExitCode.WEIGHTS);
  const chat = renderV12Chat(prompt, template);
  const segments = splitV12Segments(chat);
  const ids: number[] = [], mask: number[] = [];
  for (const s of segments) {
    const t = s.text === '<|image_pad|>' ? Array(imagePadCount).fill(QWEN_IDS.imagePad) : tokenizer.encode(s.text);
    for (const id of t) (ids.push(id), mask.push(s.inQuotation ? 1 : 0));
  }
  const keepLen = Math.max(0, Math.min(V12_MAX_LENGTH, ids.length - V12_DROP_PREFIX));
  return { chat, segments, inputIds: Int32Array.from(ids), textMask: Int32Array.from(mask), keepStart: V12_DROP_PREFIX, keepLen };
}

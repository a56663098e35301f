/**
 * The thinker's MLLM client (`QwenGenerativeAIClient.call_model` of the v1.2 thinker) on our Qwen2.5-VL:
 *
 *   chat text   the processor's chat template over [system, user(parts)], add_generation_prompt, no vision ids
 *   images      image_to_data_url (PNG: lossless) → qwen_vl_utils fetch_image (smart_resize with factor 28 and
 *               its own 4·28² … 16384·28² pixels, PIL bicubic; a copy when the size is unchanged) →
 *               Qwen2VLImageProcessorFast (min 262144 / max 802816 pixels, torch's uint8 antialiased bicubic,
 *               normalise, patchify)
 *   ids         `<|image_pad|>` expanded to t·h·w/4 per image, then one tokenisation of the whole text
 *   generate    128 new tokens at most, only 151645 stops, repetition penalty 1.05 then greedy or the sampling
 *               chain (sampling.ts); decode without special tokens, then strip()
 *
 * Not reproduced: image_to_data_url's PIL thumbnail for images whose longer side exceeds 1024 (a reducing-gap
 * draft + bicubic) — such images are resized here with plain PIL bicubic to the same size.
 */
import { Template } from '@huggingface/jinja';
import { ExitCode, Step1xError } from '../../errors.js';
import type { RgbImage } from '../../io/resize.js';
import { resize } from '../../io/resize.js';
import { resizeTorchU8 } from '../../io/resize-torch.js';
import { FETCH_MAX_PIXELS, FETCH_MIN_PIXELS, QWEN_FACTOR, patchify, smartResize } from '../../models/qwen25vl/processor.js';
import type { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import type { QwenGenerator, GenerateResult } from '../../models/qwen25vl/generate.js';
import type { GridThw } from '../../models/qwen25vl/positions.js';
import type { ThinkerMessages } from './prompts.js';
import { pyStrip } from './python.js';
import { thinkerChooser, THINKER_SAMPLING } from './sampling.js';

export const THINKER_MIN_PIXELS = 262144;
export const THINKER_MAX_PIXELS = 802816;
export const THINKER_MAX_NEW_TOKENS = 128;
export const THINKER_EOS = 151645;

export interface ThinkerImage {
  fetched: RgbImage;
  resized: RgbImage;
  pixelValues: Float32Array;
  gridThw: GridThw;
}

/** thumbnail (if > 1024) → fetch_image → the fast processor's resize, normalisation and patches. */
export function prepareThinkerImage(img: RgbImage): ThinkerImage {
  let src = img;
  const side = Math.max(img.width, img.height);
  if (side > 1024) {
    const s = 1024 / side;
    src = resize(img, Math.max(1, Math.round(img.width * s)), Math.max(1, Math.round(img.height * s)), 'bicubic');
  }
  const [fh, fw] = smartResize(src.height, src.width, QWEN_FACTOR, FETCH_MIN_PIXELS, FETCH_MAX_PIXELS, 'fetch');
  const fetched = fh === src.height && fw === src.width ? { ...src, data: src.data.slice() } : resize(src, fw, fh, 'bicubic');
  const [rh, rw] = smartResize(fh, fw, QWEN_FACTOR, THINKER_MIN_PIXELS, THINKER_MAX_PIXELS, 'processor');
  const resized = rh === fh && rw === fw ? fetched : resizeTorchU8(fetched, rw, rh, 'bicubic');
  const { pixelValues, gridThw } = patchify(resized);
  return { fetched, resized, pixelValues, gridThw };
}

/** The chat text of one call (the processor's Jinja template, add_generation_prompt). */
export function renderThinkerChat<I>(template: string, m: ThinkerMessages<I>): string {
  let t: Template;
  try {
    t = new Template(template);
  } catch (e) {
    throw new Step1xError(`chat template: cannot parse: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  const user = m.user.map((p) => (p.type === 'image' ? { type: 'image', image: 'image' } : { type: 'text', text: p.text }));
  return t.render({ messages: [{ role: 'system', content: m.system }, { role: 'user', content: user }], add_generation_prompt: true });
}

export interface PreparedCall {
  chatText: string;
  inputIds: Int32Array;
  images: ThinkerImage[];
  pixelValues: Float32Array | null;
  gridThw: GridThw[];
}

/** processor(text=[chat], images): ids with each `<|image_pad|>` expanded, images concatenated in order. */
export function prepareCall(tok: QwenTokenizer, m: ThinkerMessages<RgbImage>): PreparedCall {
  if (!tok.chatTemplate) throw new Step1xError(`tokenizer ${tok.dir}: no chat template (chat_template.jinja / .json)`, ExitCode.WEIGHTS);
  const chatText = renderThinkerChat(tok.chatTemplate, m);
  const images = m.user.flatMap((p) => (p.type === 'image' ? [prepareThinkerImage(p.image)] : []));
  const pad = '<|image_pad|>';
  const pieces = chatText.split(pad);
  if (pieces.length - 1 !== images.length)
    throw new Step1xError(`thinker: chat text has ${pieces.length - 1} image pads for ${images.length} images`, ExitCode.WEIGHTS);
  let text = pieces[0];
  images.forEach((im, i) => {
    text += pad.repeat((im.gridThw[0] * im.gridThw[1] * im.gridThw[2]) / 4) + pieces[i + 1];
  });
  const inputIds = Int32Array.from(tok.encode(text));
  let pixelValues: Float32Array | null = null;
  if (images.length) {
    pixelValues = new Float32Array(images.reduce((n, im) => n + im.pixelValues.length, 0));
    let o = 0;
    for (const im of images) {
      pixelValues.set(im.pixelValues, o);
      o += im.pixelValues.length;
    }
  }
  return { chatText, inputIds, images, pixelValues, gridThw: images.map((im) => im.gridThw) };
}

export interface ThinkerCallOptions {
  greedy: boolean;
  /** Default 128 (call_model's max_new_tokens); lower only to shorten tests. */
  maxNewTokens?: number;
  seed?: number;
  /** Per generated token: the processed scores and the raw logits (goldens, streaming to a terminal). */
  onStep?(step: number, token: number, processed: Float32Array, raw: Float32Array): void;
}

export interface ThinkerCallResult {
  prepared: PreparedCall;
  generation: GenerateResult;
  /** call_model's return: decoded without special tokens, stripped. */
  text: string;
}

/** One call_model. */
export async function callThinker(gen: QwenGenerator, tok: QwenTokenizer, m: ThinkerMessages<RgbImage>, o: ThinkerCallOptions): Promise<ThinkerCallResult> {
  const prepared = prepareCall(tok, m);
  let processed: Float32Array | null = null;
  const choose = thinkerChooser(o.greedy, o.seed ?? 0, THINKER_SAMPLING, (s) => void (processed = s));
  const generation = await gen.generate(
    { inputIds: prepared.inputIds, pixelValues: prepared.pixelValues, gridThw: prepared.gridThw },
    { maxNewTokens: o.maxNewTokens ?? THINKER_MAX_NEW_TOKENS, eosTokenIds: [THINKER_EOS], choose, onStep: (s, t, raw) => o.onStep?.(s, t, processed!, raw) },
  );
  return { prepared, generation, text: pyStrip(tok.decode(generation.ids, true)) };
}

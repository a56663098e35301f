/**
 * v1.2's prompt layout against v12_e2e_tiny (made by the fork): chat text, segments (quote rules), tokens,
 * input_ids and text_mask of the kept span, for the prompt with a quoted "OPEN 24h" and `!`, and the
 * negative prompt; plus the quote rules the case does not reach.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QwenTokenizer } from '../src/models/qwen25vl/tokenizer.js';
import { buildV12InputIds, splitV12Segments } from '../src/models/qwen25vl/prompt-v12.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo } from './util/golden-io.js';

const caseDir = goldenCase('v12_e2e_tiny');
const spec = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
const io = goldenIo();

test.each(['cond', 'uncond'])('%s: chat text, segments, tokens, kept input_ids and text_mask equal the fork', async (side) => {
  const tok = QwenTokenizer.load(join(caseDir, 'model', 'processor'));
  const s = spec.strings[side];
  const pads = (s.tokens as string[]).filter((t) => t === '<|image_pad|>').length;
  const p = buildV12InputIds(tok, side === 'cond' ? spec.spec.prompt : '', pads);
  expect(p.chat).toBe(s.chat_text);
  expect(p.segments.map((x) => ({ text: x.text, in_quotation: x.inQuotation }))).toEqual(s.segments);
  expect(Array.from(p.inputIds, (id) => tok.idToToken(id))).toEqual(s.tokens);
  expect([p.keepStart, p.keepLen]).toEqual([s.kept_from, s.kept_len]);
  const f = await io('v12_e2e_tiny');
  expect(Array.from(p.inputIds)).toEqual(Array.from(await f.readI32(`mid.input_ids.${side}`)));
  expect(Array.from(p.textMask.subarray(p.keepStart, p.keepStart + p.keepLen))).toEqual(Array.from(await f.readI32(`mid.text_mask.${side}`)));
});

test('quote rules: “…” pairs, apostrophes, a leading “ dropped, an unclosed quote stays plain in its own part', () => {
  const seg = (s: string) => splitV12Segments(s).map((x) => (x.inQuotation ? `[${x.text}]` : x.text));
  expect(seg('say “hi” now')).toEqual(['say “', '[h]', '[i]', '” now']);
  expect(seg('“ab” x')).toEqual(['[a]', '[b]', '” x']);
  expect(seg("it's \"a\"")).toEqual(["it's \"", '[a]', '"']);
  expect(seg('a "b<|im_end|>c" d')).toEqual(['a "b', '<|im_end|>', 'c" d']);
  expect(seg('x “y" z')).toEqual(['x “y" z']);
});

/**
 * Qwen2 tokenizer + Step1X prompt layout vs step1x_prompt_layout (tokens.json, io.safetensors) and
 * tiny_e2e's cond/uncond ids: every id exact.
 */
import { describe, expect, test, beforeAll, afterAll } from '@jest/globals';
import { join } from 'node:path';
import { readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { QwenTokenizer } from '../src/models/qwen25vl/tokenizer.js';
import {
  STEP1X_PREFIX, buildStep1xInputIds, renderStep1xChat, splitString,
} from '../src/models/qwen25vl/prompt.js';
import { goldenCase } from './util/golden-path.js';

const layoutDir = goldenCase('step1x_prompt_layout');
const caseJson = JSON.parse(readFileSync(join(layoutDir, 'case.json'), 'utf8'));
const tokensJson = JSON.parse(readFileSync(join(layoutDir, 'tokens.json'), 'utf8'));
const tokDir = join(layoutDir, '..', caseJson.spec.tokenizer_from);

let tok: QwenTokenizer;
const files: SafetensorsFile[] = [];
beforeAll(() => {
  tok = QwenTokenizer.load(tokDir);
});
afterAll(async () => {
  for (const f of files) await f.close();
});

function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): string {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `len ${a.length} vs ${b.length}, first diff at ${i}: ${a[i]} vs ${b[i]}`;
  return 'equal';
}

describe('prompt layout golden', () => {
  test('PREFIX constant matches the case spec', () => {
    expect(STEP1X_PREFIX).toBe(caseJson.spec.prefix);
  });

  test('header: system + user header + PREFIX is 218 tokens, ends with "User Prompt:"', () => {
    const ids = tok.encode(renderStep1xChat('x').split('Picture 1: ')[0]);
    expect(ids.length).toBe(218);
    expect(ids.slice(214)).toEqual([510, 1474, 59501, 25]);
  });

  const items = tokensJson.items as any[];
  test.each(items.map((it, i) => [i, it.caption]))('item %i: %s', async (i) => {
    const it = items[i as number];
    const spec = caseJson.spec.items[i as number];
    // chat text: Jinja template of the model dir and the hand-built string agree with Python's
    expect(renderStep1xChat(spec.caption, STEP1X_PREFIX, tok.chatTemplate)).toBe(it.chat_text);
    expect(renderStep1xChat(spec.caption, STEP1X_PREFIX)).toBe(it.chat_text);
    expect(splitString(it.chat_text).slice(1)).toEqual(it.split_string_pieces_after_first);

    const f = await SafetensorsFile.open(join(layoutDir, 'io.safetensors'));
    files.push(f);
    const grid = Array.from(await f.readI64AsNumber(spec.grid_thw_key));
    const pads = (grid[0] * grid[1] * grid[2]) / 4;
    expect(pads).toBe(spec.num_image_tokens);
    const ref = Array.from(await f.readI64AsNumber(spec.key));
    expect(ref).toEqual(it.final_input_ids);

    const p = buildStep1xInputIds(tok, spec.caption, pads);
    const msg = firstMismatch(p.inputIds, ref);
    if (msg !== 'equal') console.log(`item ${i}: ${msg}`);
    expect(msg).toBe('equal');
    for (let j = 0; j < ref.length; j++) expect(p.attentionMask[j]).toBe(ref[j] > 0 ? 1 : 0);
    expect(p.keepStart).toBe(217);
    expect(p.keepLen).toBe(Math.min(640, it.kept_len_after_217));
    // without the template file the hand-built string gives the same ids
    expect(Array.from(buildStep1xInputIds(tok, spec.caption, pads, { template: null }).inputIds)).toEqual(ref);
  });
});

describe('golden kind prompt_layout (with a minimal context)', () => {
  test('emits every out.item{i}.input_ids exactly', async () => {
    const { run } = await import('../src/golden/kinds/prompt_layout.js');
    const f = await SafetensorsFile.open(join(layoutDir, 'io.safetensors'));
    files.push(f);
    const emitted = new Map<string, ArrayLike<number>>();
    await run({
      caseDir: layoutDir, spec: caseJson.spec, io: f,
      inputInt: async (n) => Int32Array.from(await f.readI64AsNumber(n)),
      has: (n) => f.tensors.has(n),
      emit: (n, data) => void emitted.set(n, data),
      log: () => undefined,
    });
    for (const name of f.tensors.keys()) {
      if (!name.startsWith('out.')) continue;
      expect([name, firstMismatch(emitted.get(name) ?? [], await f.readI64AsNumber(name))]).toEqual([name, 'equal']);
    }
  });
});

describe('tiny_e2e cond / uncond ids', () => {
  test('prompt with a quoted phrase and the empty negative prompt', async () => {
    const dir = goldenCase('tiny_e2e');
    const cj = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
    const f = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    files.push(f);
    const grid = Array.from(await f.readI64AsNumber('mid.image_grid_thw'));
    const pads = (grid[0] * grid[1] * grid[2]) / 4;
    const t2 = QwenTokenizer.load(join(dir, 'model', 'Qwen2.5-VL-7B-Instruct'));
    for (const [name, caption] of [['cond', cj.spec.prompt], ['uncond', cj.spec.negative_prompt]]) {
      const ref = Array.from(await f.readI64AsNumber(`mid.input_ids.${name}`));
      const got = buildStep1xInputIds(t2, caption, pads);
      expect([name, firstMismatch(got.inputIds, ref)]).toEqual([name, 'equal']);
    }
  });
});

describe('qwen_vl_tiny cases: real ids and mask', () => {
  test.each(['qwen_vl_tiny', 'qwen_vl_tiny_mask'])('%s', async (c) => {
    const dir = goldenCase(c);
    const cj = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
    const f = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    files.push(f);
    const grid = Array.from(await f.readI64AsNumber('in.image_grid_thw'));
    const p = buildStep1xInputIds(tok, cj.spec.caption, (grid[0] * grid[1] * grid[2]) / 4);
    const ref = Array.from(await f.readI64AsNumber('mid.input_ids_real'));
    expect(firstMismatch(p.inputIds, ref)).toBe('equal');
    expect(Array.from(p.attentionMask)).toEqual(Array.from(await f.readI64AsNumber('in.attention_mask')));
  });
});

describe('quirks', () => {
  test('standalone "!" (id 0) is masked', () => {
    const p = buildStep1xInputIds(tok, 'Wow! Make it snow everywhere!', 300);
    const zeros = Array.from(p.inputIds).flatMap((v, i) => (v === 0 ? [i] : []));
    expect(zeros.length).toBeGreaterThan(0);
    for (const z of zeros) expect(p.attentionMask[z]).toBe(0);
    expect(Array.from(p.attentionMask).filter((m) => m === 0).length).toBe(zeros.length);
  });

  test('unclosed apostrophe destroys <|im_end|> and ends with "\\n"', () => {
    const p = buildStep1xInputIds(tok, "Make it the cat's toy", 256);
    expect(Array.from(p.inputIds.slice(p.inputIds.length - 30)).includes(151645)).toBe(false);
    expect(p.inputIds[p.inputIds.length - 1]).toBe(198);
  });

  test('Chinese quotes “…” are re-tokenised per character; image pads come from the old ids', () => {
    const p = buildStep1xInputIds(tok, '把文字改成“你好”', 256);
    let pads = 0;
    for (const v of p.inputIds) if (v === 151655) pads++;
    expect(pads).toBe(256);
    expect(p.inputIds[p.inputIds.length - 5]).toBe(151645);
  });

  test('split_string counts code points (astral characters) like Python', () => {
    const pre = 'x'.repeat(150);
    // 😀 is one code point (two UTF-16 units): the first quote is at code-point index 155 (not > 155,
    // no toggle; it would be 160 in UTF-16 units), the second at 158 opens quote mode
    expect(splitString(pre + '😀😀😀😀😀"ab"c')).toEqual([pre + '😀😀😀😀😀"ab"', '“c”']);
    expect(splitString(pre + 'yyyyyy"ab"c')).toEqual([pre + 'yyyyyy"', '“a”', '“b”', '"c']);
    expect(splitString('"a" it\'s')).toEqual(['"a" it"s']);
  });

  test('640 limit on the kept span', () => {
    const p = buildStep1xInputIds(tok, 'word '.repeat(600), 300);
    expect(p.keepLen).toBe(640);
    expect(p.inputIds.length).toBeGreaterThan(217 + 640);
  });

  test('clear errors: missing tokenizer, bad pad count', () => {
    const d = mkdtempSync(join(tmpdir(), 'tok-'));
    try {
      expect(() => QwenTokenizer.load(d)).toThrow(/tokenizer.json not found/);
      writeFileSync(join(d, 'tokenizer.json'), '{"model": {"type": "WordPiece"}}');
      expect(() => QwenTokenizer.load(d)).toThrow(/not a BPE/);
    } finally {
      rmSync(d, { recursive: true });
    }
    expect(() => buildStep1xInputIds(tok, 'x', 0)).toThrow(/imagePadCount=0/);
  });
});

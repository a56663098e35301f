/**
 * Output formats and metadata (src/io/encode.ts): the A1111 `parameters` text chunk sits before IDAT and
 * parses the way A1111's `parse_generation_parameters` reads it (an independent reader here), the
 * detailed iTXt chunks stay, non-Latin-1 text goes to iTXt as PIL writes it, .jpg/.jpeg/.webp give those
 * formats with the parameters in EXIF, any other extension is refused.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { a1111FromParameters, encodeOutput, formatA1111, outputFormatFor, parseA1111 } from '../src/io/encode.js';
import { readPngInfo } from '../src/io/png-text.js';

const IMG = { width: 5, height: 3, data: Uint8Array.from({ length: 45 }, (_, i) => (i * 37) % 256) };
const PARAMS = {
  'step1x:version': '0.1.0', model: 'step1x-edit-i1258.safetensors', instruction: 'Make the sign say "HELLO, WORLD"\nand add snow',
  negative: 'blurry', seed: '42', steps: '28', cfg: '6', size: '512', 'working-size': '512x384', 'vae-encode': 'mean',
  models: 'step1x-edit-i1258.safetensors, vae.safetensors, Qwen2.5-VL-7B-Instruct', cache: 'teacache:0.2 (skipped 9 of 28 steps)',
};

/**
 * An A1111-style reader, written from the webui's documented behaviour (modules/infotext_utils.py):
 * last line = settings when it has >= 3 `k: v` pairs, `Negative prompt:` line, quoted values unquoted.
 */
function readerA1111(x: string): Record<string, string> {
  const re = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
  const lines = x.trim().split('\n');
  let last = lines.pop()!;
  if ([...last.matchAll(re)].length < 3) {
    lines.push(last);
    last = '';
  }
  const res: Record<string, string> = {};
  let prompt = '', neg = '', done = false;
  for (const l of lines) {
    if (l.trim().startsWith('Negative prompt:')) {
      done = true;
      neg = l.trim().slice(16).trim();
    } else if (done) neg += '\n' + l;
    else prompt += (prompt ? '\n' : '') + l;
  }
  res.Prompt = prompt;
  res['Negative prompt'] = neg;
  for (const m of last.matchAll(re)) {
    const v = m[2].trim();
    res[m[1].trim()] = v.startsWith('"') && v.endsWith('"') ? JSON.parse(v) : v;
  }
  return res;
}

test('A1111 infotext: format, our parser and an independent reader agree', () => {
  const text = a1111FromParameters(PARAMS);
  const lines = text.split('\n');
  expect(lines[0]).toBe('Make the sign say "HELLO, WORLD"');
  expect(lines[2]).toBe('Negative prompt: blurry');
  expect(lines[3]).toMatch(/^Steps: 28, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 512x384, Model: step1x-edit-i1258, /);
  const r = readerA1111(text);
  expect(r.Prompt).toBe(PARAMS.instruction);
  expect(r['Negative prompt']).toBe('blurry');
  expect(r.Steps).toBe('28');
  expect(r['CFG scale']).toBe('6');
  expect(r.Seed).toBe('42');
  expect(r.Size).toBe('512x384');
  expect(r.TeaCache).toBe('teacache:0.2 (skipped 9 of 28 steps)');
  expect(r.Version).toBe('step1x 0.1.0');
  const p = parseA1111(text);
  expect(p.prompt).toBe(PARAMS.instruction);
  expect(p.negative).toBe('blurry');
  expect(Object.fromEntries(p.settings)).toEqual(Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'Prompt' && k !== 'Negative prompt')));
  // no negative prompt: no such line; a one-line prompt without settings stays a prompt
  expect(formatA1111({ prompt: 'a', negative: '', settings: [['Steps', '1'], ['Seed', '2'], ['CFG scale', '3']] })).toBe('a\nSteps: 1, Seed: 2, CFG scale: 3');
  expect(parseA1111('just: a prompt')).toEqual({ prompt: 'just: a prompt', negative: '', settings: [] });
});

test('PNG: parameters tEXt right after IHDR (before IDAT), detailed iTXt kept before IEND', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-enc-'));
  const path = join(dir, 'o.png');
  writeFileSync(path, await encodeOutput(IMG, 'png', PARAMS));
  const info = await readPngInfo(path);
  expect(info.chunks.slice(0, 3)).toEqual(['IHDR', 'tEXt', 'IDAT']);
  expect(info.chunks.filter((c) => c === 'tEXt').length).toBe(1);
  const params = info.text.find((t) => t.keyword === 'parameters')!;
  expect(params.type).toBe('tEXt');
  expect(readerA1111(params.text).Steps).toBe('28');
  expect(info.text.find((t) => t.keyword === 'instruction')?.type).toBe('iTXt');
  expect(info.text.filter((t) => t.type === 'iTXt').length).toBe(Object.keys(PARAMS).length);
  const px = await sharp(path).raw().toBuffer();
  expect(Buffer.from(IMG.data).equals(px)).toBe(true);
  // text outside Latin-1 (a Chinese instruction) goes to an iTXt "parameters", still before IDAT
  const zh = join(dir, 'zh.png');
  writeFileSync(zh, await encodeOutput(IMG, 'png', { ...PARAMS, instruction: '把天空变成紫色' }));
  const zi = await readPngInfo(zh);
  expect(zi.chunks.slice(0, 3)).toEqual(['IHDR', 'iTXt', 'IDAT']);
  expect(readerA1111(zi.text.find((t) => t.keyword === 'parameters')!.text).Prompt).toBe('把天空变成紫色');
});

test('.jpg / .jpeg / .webp write those formats with the parameters in EXIF; other extensions are refused', async () => {
  expect(outputFormatFor('a.PNG')).toBe('png');
  expect(outputFormatFor('a.jpg')).toBe('jpeg');
  expect(outputFormatFor('a.JPEG')).toBe('jpeg');
  expect(outputFormatFor('a.webp')).toBe('webp');
  expect(outputFormatFor('-')).toBe('png');
  for (const bad of ['a.gif', 'a.tiff', 'a', 'a.png.bak'])
    expect(() => outputFormatFor(bad)).toThrow(/unsupported output extension .*use \.png, \.jpg, \.jpeg or \.webp/);
  for (const f of ['jpeg', 'webp'] as const) {
    const bytes = await encodeOutput(IMG, f, PARAMS);
    const meta = await sharp(bytes).metadata();
    expect(meta.format).toBe(f);
    expect([meta.width, meta.height]).toEqual([5, 3]);
    expect(meta.exif?.toString('latin1')).toContain('Steps: 28, Sampler: Euler');
  }
});

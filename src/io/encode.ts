/**
 * Output encoding by file extension: `.png` (default, also stdout), `.jpg` / `.jpeg`, `.webp` (sharp);
 * any other extension is refused up front with a one-line usage error.
 *
 * Metadata:
 *  - PNG: the A1111-style `parameters` text chunk right after IHDR (before IDAT, where A1111, ComfyUI,
 *    civitai and sd.cpp readers look), plus the detailed step1x iTXt chunks before IEND;
 *  - JPEG / WebP: the same `parameters` text as EXIF ImageDescription (IFD0).
 * The `parameters` text (A1111 `infotext`):
 *      <prompt>
 *      Negative prompt: <negative>            (only when there is one)
 *      Steps: 28, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 512x384, Model: step1x-edit-i1258, ...
 * Values holding `,` `:` or `"` are JSON-quoted, as A1111 quotes them.
 */
import { extname } from 'node:path';
import sharp from 'sharp';
import { ExitCode, Step1xError } from '../errors.js';
import { encodePng } from './image.js';
import { encodeChunk, encodeITXtChunk } from './png-text.js';
import type { RgbImage } from './resize.js';

export type OutputFormat = 'png' | 'jpeg' | 'webp';

const EXT: Record<string, OutputFormat> = { '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg', '.webp': 'webp' };

/** The format an output path asks for; '-' (stdout) is PNG. */
export function outputFormatFor(path: string): OutputFormat {
  if (path === '-') return 'png';
  const ext = extname(path).toLowerCase();
  const f = EXT[ext];
  if (!f) throw new Step1xError(`cannot write ${path}: unsupported output extension "${ext || '(none)'}"; use .png, .jpg, .jpeg or .webp`, ExitCode.USAGE);
  return f;
}

/** An A1111 infotext: prompt, optional negative prompt, one line of `Key: value` settings. */
export interface A1111Parameters {
  prompt: string;
  negative: string;
  settings: [string, string][];
}

const quote = (v: string) => (/[,:"\n]/.test(v) ? JSON.stringify(v) : v);

export function formatA1111(p: A1111Parameters): string {
  const lines = [p.prompt];
  if (p.negative) lines.push(`Negative prompt: ${p.negative}`);
  lines.push(p.settings.map(([k, v]) => `${k}: ${quote(v.replace(/\n/g, ' '))}`).join(', '));
  return lines.join('\n');
}

/**
 * Parse an infotext the way A1111's `parse_generation_parameters` does: the last line holds the
 * settings (`Key: value` pairs, values optionally JSON-quoted), a line starting with
 * `Negative prompt:` starts the negative prompt, the lines before it are the prompt.
 */
export function parseA1111(text: string): A1111Parameters {
  const lines = text.trim().split('\n');
  const re = /\s*([\w][\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
  // as A1111: the last line is the settings line only when it holds at least 3 `Key: value` pairs
  let last = lines.pop() ?? '';
  if ((last.match(re) ?? []).length < 3) {
    lines.push(last);
    last = '';
  }
  const settings: [string, string][] = [];
  let m: RegExpExecArray | null;
  re.lastIndex = 0;
  while ((m = re.exec(last)) && m[0].length) {
    let v = m[2].trim();
    if (v.startsWith('"')) {
      try {
        v = JSON.parse(v) as string;
      } catch {
        /* keep as written */
      }
    }
    settings.push([m[1].trim(), v]);
  }
  let prompt = '', negative = '', inNeg = false;
  for (const l of lines) {
    if (l.startsWith('Negative prompt:')) {
      inNeg = true;
      negative = l.slice('Negative prompt:'.length).trim();
    } else if (inNeg) negative += `\n${l}`;
    else prompt += (prompt ? '\n' : '') + l;
  }
  return { prompt, negative, settings };
}

/** The A1111 infotext of an edit from step1x's own parameter keys (see EditResult.parameters). */
export function a1111FromParameters(t: Record<string, string>): string {
  const s: [string, string][] = [];
  const add = (k: string, v: string | undefined) => v !== undefined && v !== '' && s.push([k, v]);
  add('Steps', t.steps);
  add('Sampler', t.steps !== undefined ? 'Euler' : undefined); // flow-matching Euler (the official sampler)
  add('CFG scale', t.cfg);
  add('Seed', t.seed?.split(' ')[0]);
  add('Size', t['working-size']);
  add('Model', (t.model ?? '').replace(/\.safetensors$/, ''));
  add('Size level', t.size);
  add('VAE encode', t['vae-encode']);
  add('TeaCache', t.cache);
  add('Mask', t.mask);
  add('Version', t['step1x:version'] ? `step1x ${t['step1x:version']}` : undefined);
  return formatA1111({ prompt: t.instruction ?? '', negative: t.negative ?? '', settings: s });
}

/** A `tEXt` chunk (Latin-1), or `iTXt` when the text is not Latin-1 (what PIL and A1111 write then). */
export function encodeTextChunk(keyword: string, text: string): Uint8Array {
  if (!/^[\x00-\xff]*$/.test(text) || text.includes('\0')) return encodeITXtChunk(keyword, text);
  const kw = Buffer.from(keyword, 'latin1');
  return encodeChunk('tEXt', Uint8Array.from(Buffer.concat([kw, Buffer.from([0]), Buffer.from(text, 'latin1')])));
}

/** Insert chunks right after IHDR (so before any IDAT) of an in-memory PNG. */
export function insertAfterIhdr(png: Uint8Array, chunks: Uint8Array[]): Uint8Array {
  const at = 8 + 12 + 13; // signature + IHDR (length, type, 13 data bytes, crc)
  if (String.fromCharCode(...png.subarray(12, 16)) !== 'IHDR') throw new Step1xError('PNG does not start with IHDR', ExitCode.GPU);
  const extra = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(png.length + extra);
  out.set(png.subarray(0, at), 0);
  let p = at;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  out.set(png.subarray(at), p);
  return out;
}

/**
 * Encode an output image: PNG with `parameters` (before IDAT) and the detailed iTXt `text` (before IEND);
 * JPEG / WebP (quality 95) with `parameters` as EXIF ImageDescription.
 */
export async function encodeOutput(img: RgbImage, format: OutputFormat, text: Record<string, string>, parameters = a1111FromParameters(text)): Promise<Uint8Array> {
  if (format === 'png') return insertAfterIhdr(encodePng(img, { text }), [encodeTextChunk('parameters', parameters)]);
  const raw = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  const s = sharp(raw, { raw: { width: img.width, height: img.height, channels: 3 } });
  const enc = format === 'jpeg' ? s.jpeg({ quality: 95 }) : s.webp({ quality: 95 });
  // EXIF ASCII fields: keep to printable ASCII (non-ASCII characters become \u escapes)
  const ascii = parameters.replace(/[^\x20-\x7e\n]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return new Uint8Array(await enc.withExif({ IFD0: { ImageDescription: ascii } }).toBuffer());
}

/**
 * Strict parsing of numeric CLI options and the checks that can run before any model work:
 * commander hands options over as strings, and `Number()` takes '' as 0, '0x2' as 2 and '1e400' as
 * Infinity; each parser here accepts exactly the documented syntax and names the option when it refuses.
 * Everything in this file runs without a GPU (errors are exit 2, usage, unless said otherwise).
 */
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { checkRegularFile } from '../io/safe-read.js';
import { inputProcessSize } from '../models/qwen25vl/processor.js';

const usage = (m: string) => new Step1xError(m, ExitCode.USAGE);
const DEC_INT = /^[0-9]+$/;
const DEC_FLOAT = /^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?$/i;

/** A decimal integer in [min, max]: no sign, hex, exponent, spaces or trailing text. */
export function intOpt(name: string, v: string, min: number, max: number): number {
  const n = DEC_INT.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw usage(`--${name} must be a decimal integer in [${min}, ${max}], got "${v}"`);
  return n;
}

/** A finite decimal number in [min, max] (e.g. 6, 6.5, .5, 1e1); no hex, NaN, Infinity or empty string. */
export function floatOpt(name: string, v: string, min: number, max: number): number {
  const n = DEC_FLOAT.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < min || n > max) throw usage(`--${name} must be a decimal number in [${min}, ${max}], got "${v}"`);
  return n;
}

const BYTE_UNITS: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };
/** Smallest and largest budget that can mean anything: 64 MiB (a tiny model) to 1 PiB. */
export const MIN_BUDGET = 64 * 1024 ** 2;
export const MAX_BUDGET = 1024 ** 5;

/** "12GB", "800MiB", "2e9" → bytes; refuses unparsable, non-finite, below 64 MiB or above 1 PiB. */
export function parseBytes(v: string, name = 'vram-budget'): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$/i.exec(v);
  if (!m) throw usage(`--${name}: cannot parse "${v}" (e.g. 12GB, 8000MiB)`);
  const n = Math.floor(Number(m[1]) * BYTE_UNITS[(m[2] ?? 'b').toLowerCase()]);
  if (!Number.isFinite(n) || n > MAX_BUDGET) throw usage(`--${name} "${v}" is too large (at most 1 PiB)`);
  if (n < MIN_BUDGET) throw usage(`--${name} "${v}" is ${n} bytes; at least 64 MiB is needed`);
  return n;
}

/**
 * The working size `--size` gives for a `width`×`height` image (official size_level rule), or a usage
 * error saying which `--size` would work: "too small" when a larger size level fixes it, "too elongated"
 * when none up to 4096 does.
 */
export function checkSizeLevel(width: number, height: number, size: number, maxSize = 4096): [number, number] {
  const at = (s: number): [number, number] | undefined => {
    try {
      return inputProcessSize(width, height, s);
    } catch (e) {
      if (e instanceof Step1xError) return undefined;
      throw e;
    }
  };
  const wh = at(size);
  if (wh) return wh;
  for (let s = size + 1; s <= maxSize; s++)
    if (at(s)) throw usage(`--size ${size} is too small for a ${width}x${height} image (a side would be under 16 pixels); use --size ${s} or more`);
  throw new Step1xError(`input image ${width}x${height} is too elongated: no --size up to ${maxSize} gives both sides 16 pixels or more`, ExitCode.INPUT);
}

const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16', 'F64']);

/** Noise larger than this (16 × 1024² floats: a 8192² working size) is not an edit's latent. */
const MAX_NOISE_NUMEL = 16 * 1024 * 1024;
/** Standard normal noise stays within about ±7; far beyond, the sampler saturates into NaN / black. */
export const MAX_NOISE_ABS = 100;

/**
 * `--noise FILE` before any model work: a regular file (a FIFO is refused, not waited on) holding exactly
 * one float tensor of shape [1, 16, h, w], checked from the header before any data is read; with `latent`
 * given, h and w must match it and then every value is read and must be finite and within ±MAX_NOISE_ABS.
 */
export async function checkNoiseFile(path: string, latent?: [number, number]): Promise<void> {
  checkRegularFile(path, Number.MAX_SAFE_INTEGER, '--noise');
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(path);
  } catch (e) {
    throw usage(`--noise ${path}: ${(e as Error).message.replace(/^.*?: /, '')}`);
  }
  try {
    const names = [...f.tensors.keys()];
    // v1.2 also samples the reference latent: a file may hold `noise` and its posterior ε `ref_eps`
    const pair = names.length === 2 && names.includes('noise') && names.includes('ref_eps');
    if (names.length !== 1 && !pair) throw usage(`--noise ${path}: expected exactly one tensor (or "noise" and "ref_eps"), found ${names.length} (${names.slice(0, 5).join(', ')})`);
    for (const name of pair ? ['noise', 'ref_eps'] : names) {
      const info = f.tensors.get(name)!;
      if (!FLOAT_DTYPES.has(info.dtype)) throw usage(`--noise ${path}: tensor "${name}" is ${info.dtype}; the noise must be a float tensor (F32, F16, BF16)`);
      const want = latent ? [1, 16, latent[0], latent[1]] : undefined;
      if (info.shape.length !== 4 || info.shape[0] !== 1 || info.shape[1] !== 16 || (want && info.shape.some((d, i) => d !== want[i])))
        throw usage(`--noise ${path}: tensor "${name}" has shape ${fmtShape(info.shape)}, this edit needs ${want ? fmtShape(want) : '[1,16,H/8,W/8]'}`);
      const numel = info.shape.reduce((a, b) => a * b, 1);
      if (numel > MAX_NOISE_NUMEL) throw usage(`--noise ${path}: tensor "${name}" has shape ${fmtShape(info.shape)} (${numel} values), more than any edit's latent (${MAX_NOISE_NUMEL})`);
      if (!latent) continue; // values are read once the shape is known to be the right one
      const data = await f.readF32(name);
      let bad = 0, big = 0;
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) bad++;
        else if (Math.abs(data[i]) > MAX_NOISE_ABS) big++;
      }
      if (bad) throw usage(`--noise ${path}: tensor "${name}" holds ${bad} non-finite value(s) (NaN or infinity)`);
      if (big) throw usage(`--noise ${path}: tensor "${name}" holds ${big} value(s) beyond ±${MAX_NOISE_ABS}; initial noise is standard normal (within about ±7)`);
    }
  } finally {
    await f.close();
  }
}

/** Longest instruction (characters); Qwen keeps at most 640 tokens of the prompt anyway (see README). */
export const MAX_INSTRUCTION_CHARS = 8000;

/**
 * An instruction or negative prompt before any model work: at most MAX_INSTRUCTION_CHARS characters (the
 * whole text goes through the MLLM before the 640-token cut, so a 1 MB prompt would cost minutes), and no
 * chat-control or vision token (`<|im_end|>`, `<|image_pad|>`, …) that would rewrite the chat or the image
 * layout. `what` names it in the message.
 */
export function checkInstruction(text: string, what: string): void {
  if (text.length > MAX_INSTRUCTION_CHARS)
    throw usage(`${what} is ${text.length} characters, more than ${MAX_INSTRUCTION_CHARS}; the model reads at most 640 tokens (about 2,000 words) of it, so shorten it`);
  const m = /<\|[A-Za-z_]+\|>/.exec(text);
  if (m) throw usage(`${what} contains the special token ${m[0]}, which would change the chat or image layout the model sees; remove it`);
}

/**
 * How a step1x-quantized safetensors file (written by `step1x convert`) is laid out, and its reader.
 *
 *   __metadata__  "step1x.weights": "q8" | "q4" | "fp8"   the format (absent: an ordinary checkpoint)
 *                 "step1x.qblock":  "32"                  elements per scale block along K (q8 / q4)
 *   <key>         the checkpoint's own key. q8: I8 [N, K] codes; q4: U8 [N, K/2] (two codes + 8 per byte,
 *                 even k in the low nibble); fp8: F8_E4M3 [N, K]; tensors left as they were keep their dtype
 *   <key>.qscale  F16 [N, K / qblock] scales of a q8 / q4 tensor
 *
 * `applyQuantLayout` runs on the validated header, before anything is allocated: each quantized tensor
 * gets its logical shape [N, K] and its scale attached (`TensorInfo.quant`), the `.qscale` entries leave
 * the key list (so key checks see the checkpoint's names and shapes), and every inconsistency — an
 * unknown format, a missing, mis-shaped or mistyped scale — is one error naming the tensor.
 */
import { ExitCode, Step1xError, fmtShape } from '../errors.js';
import type { TensorInfo } from './safetensors.js';
import { QBLOCK, type BlockFormat } from './quant.js';

export const QUANT_META_KEY = 'step1x.weights';
export const QBLOCK_META_KEY = 'step1x.qblock';
export const SCALE_SUFFIX = '.qscale';
export const FILE_FORMATS = ['q8', 'q4', 'fp8'] as const;
export type FileFormat = (typeof FILE_FORMATS)[number];

export interface QuantInfo {
  format: BlockFormat;
  block: number;
  scale: TensorInfo;
  /** Shape as stored ([N, K] for q8, [N, K/2] for q4). */
  storedShape: number[];
}

function bad(file: string, msg: string): never {
  throw new Step1xError(`${file}: ${msg}`, ExitCode.WEIGHTS);
}

/** The file's weight format from its metadata (undefined = ordinary checkpoint). */
export function fileFormat(file: string, metadata: Record<string, string>): FileFormat | undefined {
  const f = metadata[QUANT_META_KEY];
  if (f === undefined) return undefined;
  if (!(FILE_FORMATS as readonly string[]).includes(f))
    bad(file, `unknown quantization format "${f}" in header metadata "${QUANT_META_KEY}" (known: ${FILE_FORMATS.join(', ')})`);
  return f as FileFormat;
}

/** Rewrite `tensors` in place for a quantized file (see the header comment). */
export function applyQuantLayout(file: string, tensors: Map<string, TensorInfo>, metadata: Record<string, string>): void {
  const format = fileFormat(file, metadata);
  const scaleKeys = [...tensors.keys()].filter((k) => k.endsWith(SCALE_SUFFIX));
  if (format !== 'q8' && format !== 'q4') {
    if (scaleKeys.length) bad(file, `tensor "${scaleKeys[0]}" is a quantization scale but the header metadata names no q8/q4 format ("${QUANT_META_KEY}")`);
    return;
  }
  const blockStr = metadata[QBLOCK_META_KEY] ?? String(QBLOCK);
  const block = Number(blockStr);
  if (!Number.isInteger(block) || block <= 0 || block % 8 !== 0) bad(file, `header metadata "${QBLOCK_META_KEY}" = "${blockStr}" is not a positive multiple of 8`);
  const codeDtype = format === 'q8' ? 'I8' : 'U8';
  for (const sk of scaleKeys) {
    const name = sk.slice(0, -SCALE_SUFFIX.length);
    const t = tensors.get(name);
    const s = tensors.get(sk)!;
    if (!t) bad(file, `scale tensor "${sk}" has no tensor "${name}" to scale`);
    if (t.dtype !== codeDtype) bad(file, `${format} tensor "${name}" is ${t.dtype}, expected ${codeDtype} codes`);
    if (t.shape.length !== 2) bad(file, `${format} tensor "${name}" has shape ${fmtShape(t.shape)}, expected [N, K${format === 'q4' ? '/2' : ''}]`);
    const [N, stored] = t.shape;
    const K = format === 'q4' ? stored * 2 : stored;
    if (K % block !== 0) bad(file, `${format} tensor "${name}" has K = ${K}, not a multiple of the block ${block}`);
    const want = [N, K / block];
    if (s.dtype !== 'F16' || s.shape.length !== 2 || s.shape[0] !== want[0] || s.shape[1] !== want[1])
      bad(file, `scale tensor "${sk}" is ${s.dtype} ${fmtShape(s.shape)}, expected F16 ${fmtShape(want)} for "${name}" ${fmtShape([N, K])}`);
    t.quant = { format, block, scale: s, storedShape: [...t.shape] };
    t.shape = [N, K];
    tensors.delete(sk);
  }
  for (const [name, t] of tensors)
    if (t.dtype === codeDtype && !t.quant) bad(file, `${format} file: tensor "${name}" is ${t.dtype} but has no scale tensor "${name}${SCALE_SUFFIX}"`);
}

/**
 * `step1x convert --to q8|q4|fp8 IN OUT`: rewrite a checkpoint with its Linear weights packed (layout in
 * io/quant-layout.ts). Keys keep their names; q8 / q4 scales go under `<key>.qscale`; the format is in
 * the header metadata (`step1x.weights`, `step1x.qblock`); every other tensor is copied byte for byte.
 * The header is written first and tensors are converted one at a time (host memory ≈ the largest
 * tensor), through io/safe-write.ts (a temp beside OUT renamed over it at the end: a failure or an
 * interrupt never leaves a partial OUT; OUT may not be a file of IN, whatever links lead there).
 */
import { writeAtomically } from './safe-write.js';
import { Checkpoint } from './checkpoint.js';
import { buildHeader, type HeaderEntry } from './safetensors.js';
import { bf16ToE4m3Codes, canPack, encodeFp8Array, isLinearWeightName, quantizeBlocks, QBLOCK } from './quant.js';
import { FILE_FORMATS, QBLOCK_META_KEY, QUANT_META_KEY, SCALE_SUFFIX, type FileFormat } from './quant-layout.js';
import { ExitCode, Step1xError } from '../errors.js';

export interface ConvertResult {
  packed: number;
  kept: number;
  inBytes: number;
  outBytes: number;
}

type Plan = { name: string; how: 'copy' | 'pack' };

export interface ConvertOptions {
  /** Linear weights to copy as they are (the model's keep-list, e.g. models/dit-config.ts DIT_KEEP). */
  keep?: (name: string, keys: string[]) => boolean;
  onTensor?: (i: number, n: number, name: string) => void;
}

export async function convertCheckpoint(inPath: string, outPath: string, to: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const onTensor = opts.onTensor;
  if (!(FILE_FORMATS as readonly string[]).includes(to)) throw new Step1xError(`convert --to must be one of ${FILE_FORMATS.join(', ')}, got "${to}"`, ExitCode.USAGE);
  const fmt = to as FileFormat;
  const ck = await Checkpoint.open(inPath);
  try {
    const plans: Plan[] = [];
    const entries: HeaderEntry[] = [];
    let inBytes = 0;
    const keys = ck.keys();
    for (const name of keys) {
      const t = ck.info(name);
      inBytes += t.end - t.begin + (t.quant ? t.quant.scale.end - t.quant.scale.begin : 0);
      const K = t.shape[1];
      const pack = isLinearWeightName(name, t.shape) && canPack(fmt === 'fp8' ? 'fp8_e4m3' : fmt, K) && !opts.keep?.(name, keys);
      if (!pack) {
        if (t.quant) throw new Step1xError(`${inPath}: tensor "${name}" is ${t.quant.format} and cannot be copied into a ${fmt} file; convert from the original checkpoint`, ExitCode.USAGE);
        plans.push({ name, how: 'copy' });
        entries.push({ name, dtype: t.dtype, shape: [...t.shape] });
        continue;
      }
      plans.push({ name, how: 'pack' });
      const [N] = t.shape;
      if (fmt === 'fp8') entries.push({ name, dtype: 'F8_E4M3', shape: [N, K] });
      else {
        entries.push({ name, dtype: fmt === 'q8' ? 'I8' : 'U8', shape: [N, fmt === 'q8' ? K : K / 2] });
        entries.push({ name: name + SCALE_SUFFIX, dtype: 'F16', shape: [N, K / QBLOCK] });
      }
    }
    const meta: Record<string, string> = { ...(ck.files.length === 1 ? ck.files[0].metadata : {}), [QUANT_META_KEY]: fmt };
    if (fmt !== 'fp8') meta[QBLOCK_META_KEY] = String(QBLOCK);
    else delete meta[QBLOCK_META_KEY];
    const { prefix, offsets, dataBytes } = buildHeader(entries, meta);
    const at = new Map(entries.map((e, i) => [e.name, prefix.length + offsets[i][0]]));
    await writeAtomically(outPath, async (fh) => {
      await fh.write(prefix, 0, prefix.length, 0);
      const write = async (name: string, b: Uint8Array) => {
        let pos = at.get(name)!;
        for (let o = 0; o < b.length; o += 1 << 30) {
          const len = Math.min(1 << 30, b.length - o);
          await fh.write(b, o, len, pos);
          pos += len;
        }
      };
      for (const [i, p] of plans.entries()) {
        onTensor?.(i, plans.length, p.name);
        const t = ck.info(p.name);
        if (p.how === 'copy') {
          await write(p.name, await ck.readBytes(p.name));
          continue;
        }
        const [N, K] = t.shape;
        if (fmt === 'fp8') {
          const codes = t.dtype === 'BF16' && !t.quant ? bf16ToE4m3Codes(new Uint16Array((await ck.readBytes(p.name)).buffer, 0, N * K)) : encodeFp8Array(await ck.readF32(p.name), 'fp8_e4m3');
          await write(p.name, codes);
        } else {
          const q = quantizeBlocks(await ck.readF32(p.name), N, K, fmt);
          await write(p.name, q.data);
          await write(p.name + SCALE_SUFFIX, new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength));
        }
      }
      await fh.truncate(prefix.length + dataBytes);
    });
    return { packed: plans.filter((p) => p.how === 'pack').length, kept: plans.filter((p) => p.how === 'copy').length, inBytes, outBytes: prefix.length + dataBytes };
  } finally {
    await ck.close();
  }
}

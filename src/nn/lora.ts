/**
 * LoRA adapters in the kohya sd-scripts format the official Step1X-Edit loader reads
 * (library/lora_module.py): for a Linear at module path P (e.g. `double_blocks.0.img_attn.qkv`),
 *
 *   lora_unet_<P with '.' → '_'>.lora_down.weight  [r, K]
 *   lora_unet_<P with '.' → '_'>.lora_up.weight    [N, r]
 *   lora_unet_<P with '.' → '_'>.alpha             []   (absent: alpha = r)
 *
 * and the weight becomes W' = W + multiplier · (up @ down) · alpha / r (the official code merges it into
 * the bf16 weight in f32 and fixes multiplier = 1; `--lora FILE:SCALE` sets it here).
 *
 * Opening validates the file from its header alone (no GPU, no data read): it must hold lora_down /
 * lora_up pairs, every up/down pair must agree on the rank. `check(ckpt)` then matches modules against a
 * checkpoint's Linear weights: a shape mismatch is an error naming the key and both shapes; modules that
 * name no Linear are returned for one warning (the official code drops them silently).
 */
import { basename } from 'node:path';
import { SafetensorsFile } from '../io/safetensors.js';
import { checkRegularFile } from '../io/safe-read.js';
import type { Checkpoint } from '../io/checkpoint.js';
import { ExitCode, Step1xError, fmtShape } from '../errors.js';

/** A LoRA file larger than this is not a LoRA (real ones: MBs to a few hundred MB). */
const MAX_LORA_BYTES = 16 * 1024 ** 3;
/** LoRA factors are O(1e-2); beyond this a value is damage, and the product overflows f16/bf16 paths. */
const MAX_LORA_ABS = 1e4;

export interface LoraModule {
  /** kohya name (`lora_unet_double_blocks_0_img_attn_qkv`). */
  key: string;
  rank: number;
  alpha: number;
  N: number;
  K: number;
}

export interface LoraFactors {
  /** [r, K] f32 */
  down: Float32Array;
  /** [N, r] f32 */
  up: Float32Array;
  rank: number;
  /** multiplier · alpha / rank */
  scale: number;
}

const PREFIX = 'lora_unet_';

/** The kohya module name of a Linear at `modulePath`. */
export const kohyaName = (modulePath: string): string => PREFIX + modulePath.replace(/\./g, '_');

export class LoraFile {
  private constructor(
    readonly path: string,
    readonly file: SafetensorsFile,
    readonly multiplier: number,
    readonly modules: Map<string, LoraModule>,
  ) {}

  /** `FILE[:SCALE]` as given to --lora. */
  static parseSpec(spec: string): { path: string; multiplier: number } {
    const m = /^(.*):(-?[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)$/i.exec(spec);
    if (m && m[1]) return { path: m[1], multiplier: Number(m[2]) };
    return { path: spec, multiplier: 1 };
  }

  static async open(path: string, multiplier = 1): Promise<LoraFile> {
    if (!Number.isFinite(multiplier)) throw new Step1xError(`--lora ${path}: scale ${multiplier} is not a number`, ExitCode.USAGE);
    // type and size before opening: a FIFO would block forever; `x:abc` is a file name, not FILE:SCALE
    try {
      checkRegularFile(path, MAX_LORA_BYTES, '--lora', ExitCode.USAGE);
    } catch (e) {
      if (/no such file/.test((e as Error).message) && /:[^/]*$/.test(path))
        throw new Step1xError(`${(e as Error).message} (--lora takes FILE or FILE:SCALE with a number as SCALE)`, ExitCode.USAGE);
      throw e;
    }
    let f: SafetensorsFile;
    try {
      f = await SafetensorsFile.open(path);
    } catch (e) {
      if (e instanceof Step1xError && e.code === ExitCode.USAGE) throw new Step1xError(`--lora ${e.message} (a LoRA must be a kohya-format .safetensors file)`, ExitCode.USAGE);
      throw e;
    }
    try {
      const modules = new Map<string, LoraModule>();
      const bad = (msg: string): never => {
        throw new Step1xError(`--lora ${path}: ${msg}`, ExitCode.USAGE);
      };
      for (const k of f.keys()) {
        const m = /^(.*)\.lora_down\.weight$/.exec(k);
        if (!m) continue;
        const key = m[1];
        const down = f.info(k);
        const upName = `${key}.lora_up.weight`;
        if (!f.has(upName)) bad(`"${k}" has no matching "${upName}"`);
        const up = f.info(upName);
        if (down.shape.length !== 2 || up.shape.length !== 2 || up.shape[1] !== down.shape[0])
          bad(`"${key}": lora_up ${fmtShape(up.shape)} and lora_down ${fmtShape(down.shape)} are not [N, r] and [r, K]`);
        const rank = down.shape[0];
        if (!(rank >= 1)) bad(`"${key}" has rank ${rank} (lora_down ${fmtShape(down.shape)}); a LoRA module needs rank >= 1`);
        let alpha = rank;
        if (f.has(`${key}.alpha`)) {
          const a = await f.readF32(`${key}.alpha`);
          if (a.length !== 1 || !Number.isFinite(a[0])) bad(`"${key}.alpha" is not one finite number`);
          alpha = a[0];
        }
        modules.set(key, { key, rank, alpha, N: up.shape[0], K: down.shape[1] });
      }
      if (!modules.size)
        bad(`not a LoRA: no "<module>.lora_down.weight" / "<module>.lora_up.weight" pairs among its ${f.keys().length} tensors (${f.keys().slice(0, 3).join(', ')}${f.keys().length > 3 ? ', ...' : ''})`);
      return new LoraFile(path, f, multiplier, modules);
    } catch (e) {
      await f.close();
      throw e;
    }
  }

  get name(): string {
    return basename(this.path);
  }

  /**
   * Match against a checkpoint: every module must name a 2-D `<path>.weight` of the right shape (error
   * otherwise); returns the module keys that name no weight of the checkpoint.
   */
  check(ckpt: Checkpoint): string[] {
    const byKohya = new Map<string, string>();
    for (const k of ckpt.keys()) if (k.endsWith('.weight') && ckpt.info(k).shape.length === 2) byKohya.set(kohyaName(k.slice(0, -7)), k);
    const unmatched: string[] = [];
    for (const m of this.modules.values()) {
      const w = byKohya.get(m.key);
      if (!w) {
        unmatched.push(m.key);
        continue;
      }
      const s = ckpt.info(w).shape;
      if (s[0] !== m.N || s[1] !== m.K)
        throw new Step1xError(
          `--lora ${this.path}: "${m.key}" (up [${m.N}, ${m.rank}] @ down [${m.rank}, ${m.K}] = ${fmtShape([m.N, m.K])}) does not fit "${w}" ${fmtShape(s)}`,
          ExitCode.USAGE,
        );
    }
    return unmatched;
  }

  /** The module for the Linear at `modulePath`, if the file has one. */
  module(modulePath: string): LoraModule | undefined {
    return this.modules.get(kohyaName(modulePath));
  }

  /** The factors for the Linear at `modulePath`, or undefined when the file has none. */
  async factors(modulePath: string): Promise<LoraFactors | undefined> {
    const m = this.modules.get(kohyaName(modulePath));
    if (!m) return undefined;
    const down = await this.file.readF32(`${m.key}.lora_down.weight`);
    const up = await this.file.readF32(`${m.key}.lora_up.weight`);
    // NaN, infinities or absurd magnitudes would turn the merged weight, and the image, into NaN (black)
    for (const [name, a] of [[`${m.key}.lora_down.weight`, down], [`${m.key}.lora_up.weight`, up]] as const) {
      let bad = 0;
      for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i]) <= MAX_LORA_ABS)) bad++;
      if (bad) throw new Step1xError(`--lora ${this.path}: "${name}" holds ${bad} value(s) that are NaN, infinite or beyond ±${MAX_LORA_ABS} (not a usable LoRA)`, ExitCode.USAGE);
    }
    return { down, up, rank: m.rank, scale: (this.multiplier * m.alpha) / m.rank };
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

/** Check several LoRAs against one checkpoint; returns one warning line for the unmatched modules, if any. */
export function checkLoras(loras: readonly LoraFile[], ckpt: Checkpoint): string | undefined {
  const parts: string[] = [];
  for (const l of loras) {
    const u = l.check(ckpt);
    if (u.length) parts.push(`${l.name}: ${u.slice(0, 20).join(', ')}${u.length > 20 ? `, ... (${u.length - 20} more)` : ''}`);
  }
  return parts.length ? `LoRA keys that match no Linear of ${basename(ckpt.path)} were ignored: ${parts.join('; ')}` : undefined;
}

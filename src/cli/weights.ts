/**
 * `--weights bf16|fp8|q8|q4` and `--lora FILE[:SCALE]` (repeatable) for the commands that run models.
 * Everything here reads headers only and runs before the GPU is touched: an unknown format, a file that
 * is not a LoRA, or a LoRA module whose shape does not fit the DiT is a one-line USAGE error; LoRA
 * modules that name no Linear of the DiT are reported in one warning.
 */
import { Checkpoint } from '../io/checkpoint.js';
import { isDiffusersComponent, openDitWeights, TRANSFORMER_CLASS } from '../models/diffusers-map.js';
import { ExitCode, Step1xError } from '../errors.js';
import { LoraFile, checkLoras } from '../nn/lora.js';
import { WEIGHTS_OPTIONS, type WeightsOption } from '../nn/weight.js';

export interface WeightCliOptions {
  weights?: string;
  lora?: string[];
}

export interface WeightChoice {
  weights?: WeightsOption;
  loras: LoraFile[];
  close(): Promise<void>;
}

export function parseWeightsOption(v: string | undefined): WeightsOption | undefined {
  if (v === undefined) return undefined;
  if (!(WEIGHTS_OPTIONS as readonly string[]).includes(v)) throw new Step1xError(`--weights must be one of ${WEIGHTS_OPTIONS.join(', ')}, got "${v}"`, ExitCode.USAGE);
  return v as WeightsOption;
}

/** commander collector for a repeatable option. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Validate --weights / --lora against the DiT checkpoint at `ditPath` (headers only). */
export async function openWeightChoice(o: WeightCliOptions, ditPath: string, warn: (m: string) => void): Promise<WeightChoice> {
  const weights = parseWeightsOption(o.weights);
  const loras: LoraFile[] = [];
  const close = async () => {
    await Promise.all(loras.map((l) => l.close()));
  };
  try {
    for (const spec of o.lora ?? []) {
      const { path, multiplier } = LoraFile.parseSpec(spec);
      loras.push(await LoraFile.open(path, multiplier));
    }
    if (loras.length) {
      // a diffusers transformer/ is opened under the official names, which kohya LoRA keys use
      const ck = isDiffusersComponent(ditPath, TRANSFORMER_CLASS) ? (await openDitWeights(ditPath)).ckpt : await Checkpoint.open(ditPath);
      try {
        const w = checkLoras(loras, ck);
        if (w) warn(w);
      } finally {
        await ck.close();
      }
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { weights, loras, close };
}

/**
 * Every model file checked before the first stage runs (headers only, no GPU, milliseconds even on the
 * 25 GB DiT): each safetensors header parses and every tensor's byte range lies inside the file (a
 * truncated download is caught here), and each checkpoint's key set and shapes match what its model
 * needs (DiT + connector sized from its own shapes plus step1x.json, the VAE likewise, Qwen2.5-VL from
 * its config.json). Any problem is one line naming the file and exits 4 (model files), never 2.
 */
import { ExitCode, Step1xError } from '../errors.js';
import { Checkpoint } from '../io/checkpoint.js';
import type { ModelFiles } from '../io/model-files.js';
import { openDitWeights, openVaeWeights } from '../models/diffusers-map.js';
import { checkVaeCheckpoint, type AeConfig } from '../models/vae-config.js';
import { loadQwenConfig } from '../models/qwen25vl/config.js';
import { openQwenCheckpoint } from '../models/qwen25vl/loader.js';

/** Run `check` on the opened checkpoint; any error becomes a WEIGHTS error naming `what`. */
async function checked(what: string, path: string, check: (ck: Checkpoint) => void | Promise<void>, open: () => Promise<Checkpoint> = () => Checkpoint.open(path)): Promise<void> {
  let ck: Checkpoint | undefined;
  try {
    ck = await open();
    await check(ck);
  } catch (e) {
    if (!(e instanceof Step1xError)) throw e;
    if (e.code === ExitCode.WEIGHTS) throw e;
    throw new Step1xError(`${what} is damaged: ${e.message}`, ExitCode.WEIGHTS);
  } finally {
    await ck?.close();
  }
}

/** Validate the DiT, VAE and Qwen2.5-VL files of a model (throws Step1xError with ExitCode.WEIGHTS). */
export async function validateModelFiles(files: ModelFiles): Promise<void> {
  // official files or diffusers component directories (models/diffusers-map.ts), checked in the file's own names
  await checked('DiT checkpoint', files.dit, () => undefined, async () => (await openDitWeights(files.dit, files.hparams ?? {})).ckpt);
  await checked('VAE checkpoint', files.vae, () => undefined, async () => {
    const { ckpt, base } = await openVaeWeights(files.vae);
    try {
      checkVaeCheckpoint(ckpt, { ...((files.hparams?.ae ?? {}) as Partial<AeConfig>), ...base });
    } catch (e) {
      await ckpt.close();
      throw e;
    }
    return ckpt;
  });
  let cfg;
  try {
    cfg = await loadQwenConfig(files.qwenDir);
  } catch (e) {
    if (e instanceof Step1xError && e.code !== ExitCode.WEIGHTS) throw new Step1xError(`Qwen2.5-VL config is damaged: ${e.message}`, ExitCode.WEIGHTS);
    throw e;
  }
  await checked('Qwen2.5-VL checkpoint', files.qwenDir, () => undefined, () => openQwenCheckpoint(files.qwenDir, cfg));
}

/**
 * FLUX AutoEncoder hyper-parameters: the real values, the exact checkpoint key set they imply
 * (`AutoEncoder(cfg).state_dict()` names and shapes, derived from the module declarations) and their
 * inference from a checkpoint's shapes.
 */
import { Checkpoint, checkKeys } from '../io/checkpoint.js';
import { Decoder, Encoder } from './vae-blocks.js';

export interface AeConfig {
  resolution: number;
  in_channels: number;
  ch: number;
  out_ch: number;
  ch_mult: number[];
  num_res_blocks: number;
  z_channels: number;
  scale_factor: number;
  shift_factor: number;
}

/** The real FLUX / Step1X-Edit autoencoder. */
export const REAL_AE: AeConfig = {
  resolution: 256, in_channels: 3, ch: 128, out_ch: 3, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, z_channels: 16,
  scale_factor: 0.3611, shift_factor: 0.1159,
};


/** Every key and shape of `AutoEncoder(cfg).state_dict()`, from the module declarations (models/vae-blocks.ts). */
export function expectedVaeKeys(cfg: AeConfig): Map<string, number[]> {
  return new Map([...new Encoder(cfg).expectedKeys('encoder'), ...new Decoder(cfg).expectedKeys('decoder')]);
}

/**
 * Hyper-parameters from the checkpoint's shapes (ch, ch_mult, num_res_blocks, z/in/out channels); what
 * cannot be inferred (missing keys) falls back to `base` (the real values by default), so checkKeys then
 * names the missing keys. scale/shift come from `base`.
 */
export function inferAeConfig(shapeOf: (name: string) => number[] | undefined, keys: string[], base: Partial<AeConfig> = {}): AeConfig {
  const cfg: AeConfig = { ...REAL_AE, ...base, ch_mult: [...(base.ch_mult ?? REAL_AE.ch_mult)] };
  const convIn = shapeOf('encoder.conv_in.weight');
  if (convIn?.length === 4) [cfg.ch, cfg.in_channels] = convIn;
  const levels = new Set<number>(), blocks = new Set<number>();
  for (const k of keys) {
    const m = /^encoder\.down\.(\d+)\.block\.(\d+)\./.exec(k);
    if (m) {
      levels.add(+m[1]);
      if (m[1] === '0') blocks.add(+m[2]);
    }
  }
  if (blocks.size) cfg.num_res_blocks = Math.max(...blocks) + 1;
  if (levels.size) {
    const L = Math.max(...levels) + 1;
    const mult: number[] = [];
    for (let i = 0; i < L; i++) {
      const s = shapeOf(`encoder.down.${i}.block.0.conv1.weight`);
      mult.push(s ? s[0] / cfg.ch : (cfg.ch_mult[i] ?? 1));
    }
    if (mult.every((v) => Number.isInteger(v) && v > 0)) cfg.ch_mult = mult;
  }
  const dz = shapeOf('decoder.conv_in.weight');
  if (dz?.length === 4) cfg.z_channels = dz[1];
  const co = shapeOf('decoder.conv_out.weight');
  if (co?.length === 4) cfg.out_ch = co[0];
  return cfg;
}

/** Infer the config from a checkpoint and check its key set exactly (throws WEIGHTS naming every bad key). */
export function checkVaeCheckpoint(ckpt: Checkpoint, base: Partial<AeConfig> = {}): AeConfig {
  const shapeOf = (n: string) => (ckpt.has(n) ? [...ckpt.info(n).shape] : undefined);
  const cfg = inferAeConfig(shapeOf, ckpt.keys(), base);
  checkKeys(ckpt, expectedVaeKeys(cfg), { what: 'VAE checkpoint' });
  return cfg;
}

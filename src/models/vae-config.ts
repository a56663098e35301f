/**
 * FLUX AutoEncoder hyper-parameters: the real values, the exact checkpoint key set they imply
 * (`AutoEncoder(cfg).state_dict()` names and shapes) and their inference from a checkpoint's shapes.
 */
import { Checkpoint, checkKeys } from '../io/checkpoint.js';

type Shapes = Map<string, number[]>;

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


// ---- key set ------------------------------------------------------------------------------------

function convKeys(m: Shapes, p: string, o: number, c: number, k: number): void {
  m.set(`${p}.weight`, [o, c, k, k]);
  m.set(`${p}.bias`, [o]);
}
function normKeys(m: Shapes, p: string, c: number): void {
  m.set(`${p}.weight`, [c]);
  m.set(`${p}.bias`, [c]);
}
function resnetKeys(m: Shapes, p: string, cin: number, cout: number): void {
  normKeys(m, `${p}.norm1`, cin);
  convKeys(m, `${p}.conv1`, cout, cin, 3);
  normKeys(m, `${p}.norm2`, cout);
  convKeys(m, `${p}.conv2`, cout, cout, 3);
  if (cin !== cout) convKeys(m, `${p}.nin_shortcut`, cout, cin, 1);
}
function attnKeys(m: Shapes, p: string, c: number): void {
  normKeys(m, `${p}.norm`, c);
  for (const n of ['q', 'k', 'v', 'proj_out']) convKeys(m, `${p}.${n}`, c, c, 1);
}
function midKeys(m: Shapes, p: string, c: number): void {
  resnetKeys(m, `${p}.block_1`, c, c);
  attnKeys(m, `${p}.attn_1`, c);
  resnetKeys(m, `${p}.block_2`, c, c);
}

/** Every key and shape of `AutoEncoder(cfg).state_dict()`. */
export function expectedVaeKeys(cfg: AeConfig): Map<string, number[]> {
  const m: Shapes = new Map();
  const { ch, ch_mult: mult, num_res_blocks: nrb, z_channels: z } = cfg;
  const L = mult.length;
  convKeys(m, 'encoder.conv_in', ch, cfg.in_channels, 3);
  let cin = ch;
  for (let i = 0; i < L; i++) {
    cin = ch * (i === 0 ? 1 : mult[i - 1]);
    const cout = ch * mult[i];
    for (let j = 0; j < nrb; j++) {
      resnetKeys(m, `encoder.down.${i}.block.${j}`, cin, cout);
      cin = cout;
    }
    if (i !== L - 1) convKeys(m, `encoder.down.${i}.downsample.conv`, cin, cin, 3);
  }
  midKeys(m, 'encoder.mid', cin);
  normKeys(m, 'encoder.norm_out', cin);
  convKeys(m, 'encoder.conv_out', 2 * z, cin, 3);
  cin = ch * mult[L - 1];
  convKeys(m, 'decoder.conv_in', cin, z, 3);
  midKeys(m, 'decoder.mid', cin);
  for (let i = L - 1; i >= 0; i--) {
    const cout = ch * mult[i];
    for (let j = 0; j < nrb + 1; j++) {
      resnetKeys(m, `decoder.up.${i}.block.${j}`, cin, cout);
      cin = cout;
    }
    if (i !== 0) convKeys(m, `decoder.up.${i}.upsample.conv`, cin, cin, 3);
  }
  normKeys(m, 'decoder.norm_out', cin);
  convKeys(m, 'decoder.conv_out', cfg.out_ch, cin, 3);
  return m;
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

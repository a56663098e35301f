/**
 * diffusers names → our modules. Our DiT and VAE modules carry the official key names (the DiT's are derived
 * from its module declaration, nn/module.ts → dit-config.ts expectedDitKeys; vae-config.ts); a diffusers `transformer/` (Step1XEditTransformer2DModel, the fork's
 * scripts/convert_step1x_edit_to_diffusers.py) or `vae/` (AutoencoderKL) is opened as a Checkpoint.view
 * under those names, so loading, streaming, --weights and the VRAM plan see one key set. The key set is
 * checked in the FILE's names first (every missing, unexpected or mis-shaped diffusers tensor named).
 *
 *   official (Step1XEdit)                    diffusers
 *   img_in / txt_in / time_in / vector_in    x_embedder / context_embedder / time_embed / vec_embed
 *   double_blocks.i.img_mod.lin              transformer_blocks.i.norm1.linear   (txt: norm1_context.linear)
 *   double_blocks.i.img_attn.qkv [3H, H]     attn.to_q | to_k | to_v  [H, H] each, stacked by rows
 *   double_blocks.i.txt_attn.qkv             attn.add_q_proj | add_k_proj | add_v_proj
 *   ..._attn.norm.{query,key}_norm.scale     attn.norm_{q,k}.weight   (txt: norm_added_{q,k})
 *   ..._attn.proj                            attn.to_out.0            (txt: attn.to_add_out)
 *   ..._mlp.{0,2}                            ff.net.0.proj, ff.net.2  (txt: ff_context.…)
 *   single_blocks.i.linear1 [3H + M, H]      attn.to_q | to_k | to_v | proj_mlp
 *   single_blocks.i.linear2 / modulation.lin proj_out / norm.linear
 *   final_layer.adaLN_modulation.1 [2H, H]   norm_out.linear with its halves swapped (diffusers: scale, shift)
 *   final_layer.linear                       proj_out
 *   connector.*, text_token_mapping          the same names
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { Checkpoint, checkKeys, type ViewEntry } from '../io/checkpoint.js';
import { REAL_DIT, checkVersion, configFromCheckpoint, expectedDitKeys, mlpHidden, validateConfig, type DitHparams, type Step1xConfig } from './dit-config.js';
import { expectedVaeKeys, type AeConfig } from './vae-config.js';

type Json = Record<string, unknown>;

function readConfig(dir: string, cls: string): Json {
  const path = join(dir, 'config.json');
  let j: unknown;
  try {
    j = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Step1xError(`cannot read ${path}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Step1xError(`${path}: must hold a JSON object`, ExitCode.WEIGHTS);
  const o = j as Json;
  if (o._class_name !== cls) throw new Step1xError(`${path}: _class_name is ${JSON.stringify(o._class_name)}, expected "${cls}"`, ExitCode.WEIGHTS);
  return o;
}

function int(o: Json, k: string, where: string, dflt?: number): number {
  const v = o[k] ?? dflt;
  if (!Number.isInteger(v) || (v as number) < 0) throw new Step1xError(`${where}: "${k}" must be a non-negative integer, got ${JSON.stringify(o[k])}`, ExitCode.WEIGHTS);
  return v as number;
}

/** Whether `path` is a diffusers component directory of class `cls` (config.json `_class_name`). */
export function isDiffusersComponent(path: string, cls: string): boolean {
  try {
    if (!statSync(path).isDirectory()) return false;
    return (JSON.parse(readFileSync(join(path, 'config.json'), 'utf8')) as Json)._class_name === cls;
  } catch {
    return false;
  }
}

export const TRANSFORMER_CLASS = 'Step1XEditTransformer2DModel';
export const VAE_CLASS = 'AutoencoderKL';

export interface DiffusersDitConfig {
  cfg: Step1xConfig;
  /** enable_text_token_mapping: Linear(connector in → hidden) added under text_mask (v1.2) */
  textTokenMapping: boolean;
}

/** transformer/config.json → our config (mlp_ratio 4, theta 10000 and qkv bias are fixed in the fork). */
export function ditConfigFromDiffusers(o: Json, where: string): DiffusersDitConfig {
  const heads = int(o, 'num_attention_heads', where), hd = int(o, 'attention_head_dim', where);
  if (int(o, 'patch_size', where, 1) !== 1) throw new Step1xError(`${where}: "patch_size" must be 1`, ExitCode.WEIGHTS);
  if (o.guidance_embeds === true) throw new Step1xError(`${where}: "guidance_embeds" true is not a Step1X-Edit model`, ExitCode.WEIGHTS);
  const axes = o.axes_dims_rope;
  if (!Array.isArray(axes)) throw new Step1xError(`${where}: "axes_dims_rope" must be a list`, ExitCode.WEIGHTS);
  const ttm = o.enable_text_token_mapping ?? false;
  if (typeof ttm !== 'boolean') throw new Step1xError(`${where}: "enable_text_token_mapping" must be true or false`, ExitCode.WEIGHTS);
  const cfg: Step1xConfig = {
    dit: {
      ...REAL_DIT,
      in_channels: int(o, 'in_channels', where), out_channels: int(o, 'out_channels', where, int(o, 'in_channels', where)),
      vec_in_dim: int(o, 'vector_in_dim', where, 768), context_in_dim: int(o, 'joint_attention_dim', where),
      hidden_size: heads * hd, num_heads: heads, depth: int(o, 'num_layers', where), depth_single_blocks: int(o, 'num_single_layers', where),
      axes_dim: axes as number[],
    },
    connector: {
      in_channels: int(o, 'connector_in_channels', where), hidden_size: int(o, 'connector_hidden_size', where),
      heads_num: int(o, 'connector_heads_num', where), depth: int(o, 'connector_depth', where),
    },
    version: ttm ? 'v1.2' : 'v1.1',
  };
  try {
    validateConfig(cfg);
  } catch (e) {
    throw new Step1xError(`${where}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  return { cfg, textTokenMapping: ttm };
}

/** official name → the diffusers tensors it is made of (stacked by rows), for a config. */
export function ditNameMap(c: Step1xConfig, textTokenMapping: boolean): Map<string, string[]> {
  const m = new Map<string, string[]>();
  const official = expectedDitKeys({ ...c, version: textTokenMapping ? 'v1.2' : 'v1.1' });
  const rules: [RegExp, (...g: string[]) => string[]][] = [
    [/^img_in\.(\w+)$/, (s) => [`x_embedder.${s}`]],
    [/^txt_in\.(\w+)$/, (s) => [`context_embedder.${s}`]],
    [/^time_in\.(.+)$/, (s) => [`time_embed.${s}`]],
    [/^vector_in\.(.+)$/, (s) => [`vec_embed.${s}`]],
    [/^final_layer\.linear\.(\w+)$/, (s) => [`proj_out.${s}`]],
    [/^final_layer\.adaLN_modulation\.1\.(\w+)$/, (s) => [`norm_out.linear.${s}`]],
    [/^double_blocks\.(\d+)\.(img|txt)_mod\.lin\.(\w+)$/, (i, t, s) => [`transformer_blocks.${i}.${t === 'img' ? 'norm1' : 'norm1_context'}.linear.${s}`]],
    [/^double_blocks\.(\d+)\.img_attn\.qkv\.(\w+)$/, (i, s) => ['to_q', 'to_k', 'to_v'].map((n) => `transformer_blocks.${i}.attn.${n}.${s}`)],
    [/^double_blocks\.(\d+)\.txt_attn\.qkv\.(\w+)$/, (i, s) => ['add_q_proj', 'add_k_proj', 'add_v_proj'].map((n) => `transformer_blocks.${i}.attn.${n}.${s}`)],
    [/^double_blocks\.(\d+)\.(img|txt)_attn\.norm\.(query|key)_norm\.scale$/, (i, t, q) => [`transformer_blocks.${i}.attn.norm_${t === 'img' ? '' : 'added_'}${q === 'query' ? 'q' : 'k'}.weight`]],
    [/^double_blocks\.(\d+)\.img_attn\.proj\.(\w+)$/, (i, s) => [`transformer_blocks.${i}.attn.to_out.0.${s}`]],
    [/^double_blocks\.(\d+)\.txt_attn\.proj\.(\w+)$/, (i, s) => [`transformer_blocks.${i}.attn.to_add_out.${s}`]],
    [/^double_blocks\.(\d+)\.(img|txt)_mlp\.(0|2)\.(\w+)$/, (i, t, k, s) => [`transformer_blocks.${i}.${t === 'img' ? 'ff' : 'ff_context'}.net.${k === '0' ? '0.proj' : '2'}.${s}`]],
    [/^single_blocks\.(\d+)\.linear1\.(\w+)$/, (i, s) => ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'].map((n) => `single_transformer_blocks.${i}.${n}.${s}`)],
    [/^single_blocks\.(\d+)\.linear2\.(\w+)$/, (i, s) => [`single_transformer_blocks.${i}.proj_out.${s}`]],
    [/^single_blocks\.(\d+)\.norm\.(query|key)_norm\.scale$/, (i, q) => [`single_transformer_blocks.${i}.attn.norm_${q === 'query' ? 'q' : 'k'}.weight`]],
    [/^single_blocks\.(\d+)\.modulation\.lin\.(\w+)$/, (i, s) => [`single_transformer_blocks.${i}.norm.linear.${s}`]],
    [/^(connector\..+|text_token_mapping\.\w+)$/, (n) => [n]],
  ];
  for (const name of official.keys()) {
    const r = rules.find(([re]) => re.test(name));
    if (!r) throw new Step1xError(`internal: no diffusers name for "${name}"`, ExitCode.GPU);
    m.set(name, r[1](...re(r[0], name)));
  }
  return m;
}

const re = (r: RegExp, s: string): string[] => r.exec(s)!.slice(1);

/** The diffusers tensors and shapes a config implies (what checkKeys compares the transformer/ file with). */
export function expectedDiffusersDitKeys(c: Step1xConfig, textTokenMapping: boolean): Map<string, number[]> {
  const H = c.dit.hidden_size, M = mlpHidden(H, c.dit.mlp_ratio);
  const shapes = expectedDitKeys({ ...c, version: textTokenMapping ? 'v1.2' : 'v1.1' });
  const out = new Map<string, number[]>();
  for (const [name, parts] of ditNameMap(c, textTokenMapping)) {
    const s = shapes.get(name)!;
    if (parts.length === 1) out.set(parts[0], s);
    else parts.forEach((p, i) => out.set(p, [i < 3 ? H : M, ...s.slice(1)]));
  }
  return out;
}

/** Open transformer/, check its diffusers key set, and return it under the official names with its config. */
export async function openDiffusersDit(dir: string): Promise<{ ckpt: Checkpoint; cfg: Step1xConfig; textTokenMapping: boolean }> {
  const { cfg, textTokenMapping } = ditConfigFromDiffusers(readConfig(dir, TRANSFORMER_CLASS), join(dir, 'config.json'));
  const src = await Checkpoint.open(dir);
  try {
    checkKeys(src, expectedDiffusersDitKeys(cfg, textTokenMapping), { what: `transformer (diffusers ${TRANSFORMER_CLASS})` });
    const H = cfg.dit.hidden_size;
    const entries = new Map<string, ViewEntry>();
    for (const [name, parts] of ditNameMap(cfg, textTokenMapping)) {
      // AdaLayerNormContinuous chunks (scale, shift); FLUX's LastLayer (shift, scale): swap the halves back
      if (name.startsWith('final_layer.adaLN_modulation.1.')) entries.set(name, { parts: [{ name: parts[0], start: H, count: H }, { name: parts[0], start: 0, count: H }] });
      else entries.set(name, { parts });
    }
    return { ckpt: Checkpoint.view(src, entries), cfg, textTokenMapping };
  } catch (e) {
    await src.close();
    throw e;
  }
}

// ---- VAE --------------------------------------------------------------------------------------------

/** vae/config.json → AeConfig; what our FLUX AutoEncoder cannot run is refused by name. */
export function aeConfigFromDiffusers(o: Json, where: string): AeConfig {
  const boc = o.block_out_channels;
  if (!Array.isArray(boc) || boc.length === 0 || boc.some((c) => !Number.isInteger(c) || c <= 0 || c % boc[0]))
    throw new Step1xError(`${where}: "block_out_channels" must be positive multiples of the first, got ${JSON.stringify(boc)}`, ExitCode.WEIGHTS);
  const fixed: [string, unknown][] = [['act_fn', 'silu'], ['norm_num_groups', 32], ['use_quant_conv', false], ['use_post_quant_conv', false], ['mid_block_add_attention', true]];
  for (const [k, want] of fixed)
    if (o[k] !== undefined && o[k] !== want) throw new Step1xError(`${where}: "${k}" is ${JSON.stringify(o[k])}; the FLUX autoencoder needs ${JSON.stringify(want)}`, ExitCode.WEIGHTS);
  for (const k of ['latents_mean', 'latents_std']) if (o[k] != null) throw new Step1xError(`${where}: "${k}" is set; the FLUX autoencoder uses scaling/shift only`, ExitCode.WEIGHTS);
  const num = (k: string) => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Step1xError(`${where}: "${k}" must be a number, got ${JSON.stringify(v)}`, ExitCode.WEIGHTS);
    return v;
  };
  return {
    resolution: int(o, 'sample_size', where, 256), in_channels: int(o, 'in_channels', where, 3), out_ch: int(o, 'out_channels', where, 3),
    ch: boc[0], ch_mult: boc.map((c: number) => c / boc[0]), num_res_blocks: int(o, 'layers_per_block', where), z_channels: int(o, 'latent_channels', where),
    scale_factor: num('scaling_factor'), shift_factor: num('shift_factor'),
  };
}

/** official VAE name → diffusers name and shape (attention projections are Linear [C, C], FLUX's 1×1 convs). */
export function vaeNameMap(cfg: AeConfig): Map<string, { from: string; shape: number[] }> {
  const L = cfg.ch_mult.length;
  const res = (s: string) => s.replace(/\.nin_shortcut\./, '.conv_shortcut.');
  const mid = (p: string, s: string) =>
    s.replace(/^block_1\./, `${p}.mid_block.resnets.0.`).replace(/^block_2\./, `${p}.mid_block.resnets.1.`)
      .replace(/^attn_1\.norm\./, `${p}.mid_block.attentions.0.group_norm.`).replace(/^attn_1\.(q|k|v)\./, (_, x) => `${p}.mid_block.attentions.0.to_${x}.`)
      .replace(/^attn_1\.proj_out\./, `${p}.mid_block.attentions.0.to_out.0.`);
  const one = (name: string): string => {
    let g: string[] | null;
    if ((g = /^(encoder|decoder)\.(conv_in|conv_out)\.(\w+)$/.exec(name))) return name;
    if ((g = /^(encoder|decoder)\.norm_out\.(\w+)$/.exec(name))) return `${g[1]}.conv_norm_out.${g[2]}`;
    if ((g = /^(encoder|decoder)\.mid\.(.+)$/.exec(name))) return mid(g[1], g[2]);
    if ((g = /^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$/.exec(name))) return res(`encoder.down_blocks.${g[1]}.resnets.${g[2]}.${g[3]}`);
    if ((g = /^encoder\.down\.(\d+)\.downsample\.conv\.(\w+)$/.exec(name))) return `encoder.down_blocks.${g[1]}.downsamplers.0.conv.${g[2]}`;
    // diffusers numbers the decoder's up blocks in execution order, FLUX by resolution level
    if ((g = /^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$/.exec(name))) return res(`decoder.up_blocks.${L - 1 - +g[1]}.resnets.${g[2]}.${g[3]}`);
    if ((g = /^decoder\.up\.(\d+)\.upsample\.conv\.(\w+)$/.exec(name))) return `decoder.up_blocks.${L - 1 - +g[1]}.upsamplers.0.conv.${g[2]}`;
    throw new Step1xError(`internal: no diffusers name for VAE tensor "${name}"`, ExitCode.GPU);
  };
  const m = new Map<string, { from: string; shape: number[] }>();
  for (const [name, shape] of expectedVaeKeys(cfg)) {
    const from = one(name);
    m.set(name, { from, shape: /attentions\.0\.to_/.test(from) && shape.length === 4 ? shape.slice(0, 2) : shape });
  }
  return m;
}

/** Open vae/, check its diffusers key set, and return it under the official names with its config. */
export async function openDiffusersVae(dir: string): Promise<{ ckpt: Checkpoint; cfg: AeConfig }> {
  const cfg = aeConfigFromDiffusers(readConfig(dir, VAE_CLASS), join(dir, 'config.json'));
  const src = await Checkpoint.open(dir);
  try {
    const map = vaeNameMap(cfg);
    checkKeys(src, new Map([...map.values()].map((v) => [v.from, v.shape])), { what: `vae (diffusers ${VAE_CLASS})` });
    const official = expectedVaeKeys(cfg);
    return { ckpt: Checkpoint.view(src, new Map([...map].map(([n, v]) => [n, { parts: [v.from], shape: official.get(n) }]))), cfg };
  } catch (e) {
    await src.close();
    throw e;
  }
}

// ---- either layout ----------------------------------------------------------------------------------

/**
 * The DiT weights at `path` under the official names, with their config and the key set checked: a
 * diffusers transformer/ directory (sized by its config.json) or an official file / directory (sized by
 * its shapes plus `hparams`). A version asked for (`hparams.version`) must be the one the weights tell.
 */
export async function openDitWeights(path: string, hparams: DitHparams = {}): Promise<{ ckpt: Checkpoint; cfg: Step1xConfig }> {
  const diffusers = isDiffusersComponent(path, TRANSFORMER_CLASS);
  const opened = diffusers ? await openDiffusersDit(path) : { ckpt: await Checkpoint.open(path), cfg: undefined };
  const ckpt = opened.ckpt;
  try {
    let cfg = opened.cfg;
    if (cfg) checkVersion(path, cfg.version, hparams.version);
    else {
      cfg = configFromCheckpoint(ckpt.keys(), (n) => (ckpt.has(n) ? ckpt.info(n).shape : undefined), hparams, path);
      checkKeys(ckpt, expectedDitKeys(cfg), { what: 'DiT checkpoint' });
    }
    return { ckpt, cfg };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}

/** The VAE weights at `path` under the official names: a diffusers vae/ directory (its config gives scale/shift) or an official file. */
export async function openVaeWeights(path: string): Promise<{ ckpt: Checkpoint; base: Partial<AeConfig> }> {
  if (isDiffusersComponent(path, VAE_CLASS)) {
    const { ckpt, cfg } = await openDiffusersVae(path);
    return { ckpt, base: cfg };
  }
  return { ckpt: await Checkpoint.open(path), base: {} };
}

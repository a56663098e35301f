/**
 * Qwen2.5-VL hyper-parameters, read from the model directory's `config.json`
 * (Qwen2_5_VLForConditionalGeneration). Field names follow transformers' config classes.
 * Real 7B values: text hidden 3584, 28 layers, 28 heads / 4 KV heads (Dh 128), MLP 18944,
 * mrope_section [16, 24, 24]; vision hidden 1280, depth 32, 16 heads (Dh 80), MLP 3420,
 * out_hidden 3584, fullatt_block_indexes [7, 15, 23, 31], window 112 px.
 */
import { readCheckedText } from '../../io/safe-read.js';
import { join } from 'node:path';
import { ExitCode, Step1xError, fail } from '../../errors.js';

export interface QwenVisionConfig {
  depth: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  inChans: number;
  outHiddenSize: number;
  patchSize: number;
  spatialMergeSize: number;
  temporalPatchSize: number;
  windowSize: number;
  fullattBlockIndexes: number[];
  tokensPerSecond: number;
  hiddenAct: string;
}

export interface QwenTextConfig {
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  mropeSection: [number, number, number];
  vocabSize: number;
  hiddenAct: string;
}

export interface QwenVLConfig {
  vision: QwenVisionConfig;
  text: QwenTextConfig;
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
}

type Json = Record<string, unknown>;

function num(o: Json, key: string, where: string, dflt?: number): number {
  const v = o[key];
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${where}: "${key}" must be a number, got ${JSON.stringify(v)}`, ExitCode.WEIGHTS);
  return v;
}

/** A float in (lo, hi): an eps of 0 or below, or a theta of 0, would turn every activation into NaN. */
function inRange(v: number, key: string, where: string, lo: number, hi: number): number {
  if (!(v > lo && v < hi)) fail(`${where}: "${key}" = ${v} must be in (${lo}, ${hi}); the config file is damaged`, ExitCode.WEIGHTS);
  return v;
}

/**
 * Sane upper bounds, checked before anything is sized from the config: a hostile or broken config.json
 * (`num_hidden_layers: 10000000`) must be refused at once, not after minutes of allocation.
 */
const MAX_OF: Record<string, number> = {
  depth: 1024, num_hidden_layers: 1024, num_heads: 1024, num_attention_heads: 1024, num_key_value_heads: 1024,
  hidden_size: 65536, out_hidden_size: 65536, intermediate_size: 1 << 20, vocab_size: 1 << 24, in_chans: 16,
  patch_size: 1024, spatial_merge_size: 64, temporal_patch_size: 64, window_size: 1 << 16,
};

function posInt(o: Json, key: string, where: string, dflt?: number): number {
  const v = num(o, key, where, dflt);
  if (!Number.isInteger(v) || v <= 0) fail(`${where}: "${key}" must be a positive integer, got ${v}`, ExitCode.WEIGHTS);
  const max = MAX_OF[key];
  if (max !== undefined && v > max) fail(`${where}: "${key}" = ${v} is beyond any sane model (at most ${max}); the config file is damaged`, ExitCode.WEIGHTS);
  return v;
}

/** Parse a Qwen2.5-VL config.json object (the text fields may also sit under `text_config`, newer layout). */
export function parseQwenConfig(raw: unknown, where = 'config.json'): QwenVLConfig {
  if (!raw || typeof raw !== 'object') fail(`${where}: not a JSON object`, ExitCode.WEIGHTS);
  const top = raw as Json;
  const tc = top.text_config as Json | undefined;
  if (tc !== undefined && (!tc || typeof tc !== 'object' || Array.isArray(tc))) fail(`${where}: "text_config" must be an object`, ExitCode.WEIGHTS);
  // transformers >= 4.52 save_pretrained writes the text fields twice (top level and text_config): they must agree
  for (const k of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'vocab_size', 'rope_theta', 'rms_norm_eps'])
    if (tc && top[k] !== undefined && tc[k] !== undefined && top[k] !== tc[k])
      fail(`${where}: "${k}" is ${JSON.stringify(top[k])} at the top level but ${JSON.stringify(tc[k])} in text_config`, ExitCode.WEIGHTS);
  const t: Json = { ...top, ...(tc ?? {}) };
  const vRaw = top.vision_config as Json | undefined;
  if (!vRaw || typeof vRaw !== 'object') fail(`${where}: missing "vision_config"`, ExitCode.WEIGHTS);
  const vw = `${where} vision_config`;
  const vision: QwenVisionConfig = {
    depth: posInt(vRaw, 'depth', vw),
    hiddenSize: posInt(vRaw, 'hidden_size', vw),
    intermediateSize: posInt(vRaw, 'intermediate_size', vw),
    numHeads: posInt(vRaw, 'num_heads', vw),
    inChans: posInt(vRaw, 'in_chans', vw, (vRaw.in_channels as number) ?? 3),
    outHiddenSize: posInt(vRaw, 'out_hidden_size', vw),
    patchSize: posInt(vRaw, 'patch_size', vw, 14),
    spatialMergeSize: posInt(vRaw, 'spatial_merge_size', vw, 2),
    temporalPatchSize: posInt(vRaw, 'temporal_patch_size', vw, 2),
    windowSize: posInt(vRaw, 'window_size', vw, 112),
    fullattBlockIndexes: (vRaw.fullatt_block_indexes as number[] | undefined) ?? [],
    tokensPerSecond: num(vRaw, 'tokens_per_second', vw, 2),
    hiddenAct: (vRaw.hidden_act as string | undefined) ?? 'silu',
  };
  if (vision.hiddenSize % vision.numHeads) fail(`${vw}: hidden_size ${vision.hiddenSize} not divisible by num_heads ${vision.numHeads}`, ExitCode.WEIGHTS);
  if (((vision.hiddenSize / vision.numHeads) % 4) !== 0) fail(`${vw}: vision head dim must be a multiple of 4 (2-D rope)`, ExitCode.WEIGHTS);
  if (!Array.isArray(vision.fullattBlockIndexes) || vision.fullattBlockIndexes.some((i) => !Number.isInteger(i) || i < 0 || i >= vision.depth))
    fail(`${vw}: bad fullatt_block_indexes ${JSON.stringify(vision.fullattBlockIndexes)} for depth ${vision.depth}`, ExitCode.WEIGHTS);
  if (vision.hiddenAct !== 'silu') fail(`${vw}: hidden_act "${vision.hiddenAct}" not supported (only silu)`, ExitCode.WEIGHTS);

  const hiddenSize = posInt(t, 'hidden_size', where);
  const numAttentionHeads = posInt(t, 'num_attention_heads', where);
  const numKeyValueHeads = posInt(t, 'num_key_value_heads', where, numAttentionHeads);
  if (hiddenSize % numAttentionHeads) fail(`${where}: hidden_size ${hiddenSize} not divisible by num_attention_heads ${numAttentionHeads}`, ExitCode.WEIGHTS);
  if (numAttentionHeads % numKeyValueHeads) fail(`${where}: num_key_value_heads ${numKeyValueHeads} must divide num_attention_heads ${numAttentionHeads}`, ExitCode.WEIGHTS);
  const headDim = hiddenSize / numAttentionHeads;
  const rs = t.rope_scaling as Json | undefined;
  const sec = rs?.mrope_section as number[] | undefined;
  if (!Array.isArray(sec) || sec.length !== 3 || sec.some((s) => !Number.isInteger(s) || s < 0))
    fail(`${where}: rope_scaling.mrope_section must be 3 integers, got ${JSON.stringify(sec)}`, ExitCode.WEIGHTS);
  if (sec[0] + sec[1] + sec[2] !== headDim / 2)
    fail(`${where}: sum(mrope_section) ${sec[0] + sec[1] + sec[2]} must equal head_dim/2 = ${headDim / 2}`, ExitCode.WEIGHTS);
  const text: QwenTextConfig = {
    hiddenSize,
    intermediateSize: posInt(t, 'intermediate_size', where),
    numHiddenLayers: posInt(t, 'num_hidden_layers', where),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: inRange(num(t, 'rms_norm_eps', where, 1e-6), 'rms_norm_eps', where, 0, 1),
    ropeTheta: inRange(num(t, 'rope_theta', where, 1000000), 'rope_theta', where, 0, 1e12),
    mropeSection: [sec[0], sec[1], sec[2]],
    vocabSize: posInt(t, 'vocab_size', where),
    hiddenAct: (t.hidden_act as string | undefined) ?? 'silu',
  };
  if (text.hiddenAct !== 'silu') fail(`${where}: hidden_act "${text.hiddenAct}" not supported (only silu)`, ExitCode.WEIGHTS);
  if (vision.outHiddenSize !== hiddenSize)
    fail(`${where}: vision_config.out_hidden_size ${vision.outHiddenSize} must equal hidden_size ${hiddenSize}`, ExitCode.WEIGHTS);
  return {
    vision,
    text,
    imageTokenId: num(top, 'image_token_id', where, 151655),
    videoTokenId: num(top, 'video_token_id', where, 151656),
    visionStartTokenId: num(top, 'vision_start_token_id', where, 151652),
    visionEndTokenId: num(top, 'vision_end_token_id', where, 151653),
  };
}

/** Read `<dir>/config.json` (or a path to the JSON file itself). */
export async function loadQwenConfig(dirOrFile: string): Promise<QwenVLConfig> {
  const path = dirOrFile.endsWith('.json') ? dirOrFile : join(dirOrFile, 'config.json');
  let text: string;
  try {
    text = readCheckedText(path, 1 << 20, 'Qwen config', ExitCode.WEIGHTS); // a FIFO or a huge file is refused first
  } catch (e) {
    if (e instanceof Step1xError) throw e;
    fail(`cannot read Qwen config ${path}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail(`${path}: invalid JSON (${(e as Error).message})`, ExitCode.WEIGHTS);
  }
  return parseQwenConfig(raw, path);
}

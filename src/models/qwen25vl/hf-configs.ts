/**
 * The two small transformers configs beside a Qwen2.5-VL model: `generation_config.json` (what
 * `generate()` adds to its call: repetition penalty, stop ids) and the image processor's
 * `preprocessor_config.json`. Our processor (processor.ts) has the patch geometry and CLIP statistics
 * built in, so a file that disagrees with them is refused instead of silently ignored.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ExitCode, fail } from '../../errors.js';
import { CLIP_MEAN, CLIP_STD, QWEN_MERGE, QWEN_PATCH, QWEN_TEMPORAL } from './processor.js';

type Json = Record<string, unknown>;

/** transformers GenerationConfig fields Step1X's thinker relies on (snake_case → camelCase). */
export interface QwenGenerationConfig {
  bosTokenId: number;
  /** stop ids; the file may hold one id or a list */
  eosTokenIds: number[];
  padTokenId: number;
  doSample: boolean;
  /** 1 = off (GenerationConfig's default) */
  repetitionPenalty: number;
  temperature: number;
  /** GenerationConfig defaults when absent: top_k 50, top_p 1 */
  topK: number;
  topP: number;
}

export interface QwenPreprocessorConfig {
  minPixels: number;
  maxPixels: number;
  /** PIL resample code of the slow processor (3 = bicubic) */
  resample: number;
}

function readObject(path: string): Json {
  let j: unknown;
  try {
    j = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`cannot read ${path}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) fail(`${path}: must hold a JSON object`, ExitCode.WEIGHTS);
  return j as Json;
}

function tokenId(v: unknown, key: string, where: string): number {
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) >= 1 << 24) fail(`${where}: "${key}" must be a token id, got ${JSON.stringify(v)}`, ExitCode.WEIGHTS);
  return v as number;
}

function positive(o: Json, key: string, where: string, dflt: number): number {
  const v = o[key] ?? dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`${where}: "${key}" must be a positive number, got ${JSON.stringify(v)}`, ExitCode.WEIGHTS);
  return v;
}

export function parseGenerationConfig(raw: Json, where = 'generation_config.json'): QwenGenerationConfig {
  const eosRaw = raw.eos_token_id;
  const eos = Array.isArray(eosRaw) ? eosRaw : [eosRaw];
  if (eos.length === 0) fail(`${where}: "eos_token_id" is empty`, ExitCode.WEIGHTS);
  const doSample = raw.do_sample ?? false;
  if (typeof doSample !== 'boolean') fail(`${where}: "do_sample" must be true or false, got ${JSON.stringify(doSample)}`, ExitCode.WEIGHTS);
  const topK = raw.top_k ?? 50;
  if (!Number.isInteger(topK) || (topK as number) < 0) fail(`${where}: "top_k" must be a non-negative integer, got ${JSON.stringify(topK)}`, ExitCode.WEIGHTS);
  const topP = positive(raw, 'top_p', where, 1);
  if (topP > 1) fail(`${where}: "top_p" must be in (0, 1], got ${topP}`, ExitCode.WEIGHTS);
  const eosTokenIds = eos.map((v, i) => tokenId(v, `eos_token_id[${i}]`, where));
  return {
    bosTokenId: tokenId(raw.bos_token_id, 'bos_token_id', where),
    eosTokenIds,
    padTokenId: raw.pad_token_id === undefined ? eosTokenIds[0] : tokenId(raw.pad_token_id, 'pad_token_id', where),
    doSample,
    repetitionPenalty: positive(raw, 'repetition_penalty', where, 1),
    temperature: positive(raw, 'temperature', where, 1),
    topK: topK as number,
    topP,
  };
}

/** `<dir>/generation_config.json`. */
export function loadGenerationConfig(dir: string): QwenGenerationConfig {
  const path = join(dir, 'generation_config.json');
  return parseGenerationConfig(readObject(path), path);
}

const near = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < 1e-6);

export function parsePreprocessorConfig(raw: Json, where = 'preprocessor_config.json'): QwenPreprocessorConfig {
  const fixed: [string, number][] = [['patch_size', QWEN_PATCH], ['merge_size', QWEN_MERGE], ['temporal_patch_size', QWEN_TEMPORAL]];
  for (const [k, want] of fixed)
    if (raw[k] !== undefined && raw[k] !== want) fail(`${where}: "${k}" is ${JSON.stringify(raw[k])}; Qwen2.5-VL's processor needs ${want}`, ExitCode.WEIGHTS);
  for (const [k, want] of [['image_mean', CLIP_MEAN], ['image_std', CLIP_STD]] as const) {
    const v = raw[k];
    if (v !== undefined && !(Array.isArray(v) && near(v as number[], want)))
      fail(`${where}: "${k}" is ${JSON.stringify(v)}; Qwen2.5-VL's processor normalises with ${JSON.stringify(want)}`, ExitCode.WEIGHTS);
  }
  for (const [k, want] of [['do_resize', true], ['do_rescale', true], ['do_normalize', true], ['do_convert_rgb', true]] as const)
    if (raw[k] !== undefined && raw[k] !== want) fail(`${where}: "${k}" is ${JSON.stringify(raw[k])}; only ${want} is supported`, ExitCode.WEIGHTS);
  const size = (raw.size ?? {}) as Json;
  const minPixels = positive(raw, 'min_pixels', where, (size.shortest_edge as number) ?? 56 * 56);
  const maxPixels = positive(raw, 'max_pixels', where, (size.longest_edge as number) ?? 28 * 28 * 1280);
  if (minPixels > maxPixels) fail(`${where}: min_pixels ${minPixels} exceeds max_pixels ${maxPixels}`, ExitCode.WEIGHTS);
  const resample = raw.resample ?? 3;
  if (!Number.isInteger(resample)) fail(`${where}: "resample" must be a PIL filter code, got ${JSON.stringify(resample)}`, ExitCode.WEIGHTS);
  return { minPixels, maxPixels, resample: resample as number };
}

/** `<dir>/preprocessor_config.json`. */
export function loadPreprocessorConfig(dir: string): QwenPreprocessorConfig {
  const path = join(dir, 'preprocessor_config.json');
  return parsePreprocessorConfig(readObject(path), path);
}

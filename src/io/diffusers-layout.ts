/**
 * A model directory in the diffusers layout (`stepfun-ai/Step1X-Edit-v1p2`, `Step1X-Edit-v1p1-diffusers`):
 *
 *   model_index.json                 pipeline class + one [library, class] pair per component
 *   transformer/config.json          Step1XEditTransformer2DModel; weights one file or shards + index
 *   text_encoder/config.json         Qwen2_5_VLForConditionalGeneration (transformers save_pretrained),
 *                generation_config.json, model-*.safetensors + model.safetensors.index.json (or one file)
 *   processor/                       tokenizer.json, tokenizer_config.json, chat_template.jinja,
 *                                    preprocessor_config.json (the real v1p2 repo also keeps them in text_encoder/)
 *   vae/config.json                  AutoencoderKL; diffusion_pytorch_model.safetensors
 *   scheduler/scheduler_config.json  FlowMatchEulerDiscreteScheduler
 *
 * The version is told by the files: the pipeline class (`Step1XEditPipelineV1P2` → v1.2,
 * `Step1XEditPipeline` → v1.1). Every component is checked for its class and its required files before
 * anything is opened; what is missing is named, all at once.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';

export const MODEL_INDEX = 'model_index.json';
export type DiffusersVersion = 'v1.1' | 'v1.2';

/** Pipeline class → the Step1X-Edit version it runs. */
export const PIPELINE_VERSION: Record<string, DiffusersVersion> = {
  Step1XEditPipelineV1P2: 'v1.2',
  Step1XEditPipeline: 'v1.1',
};

/** The component classes we load, by component name (model_index.json `[library, class]`). */
export const COMPONENT_CLASS: Record<string, [string, string]> = {
  transformer: ['diffusers', 'Step1XEditTransformer2DModel'],
  text_encoder: ['transformers', 'Qwen2_5_VLForConditionalGeneration'],
  vae: ['diffusers', 'AutoencoderKL'],
  scheduler: ['diffusers', 'FlowMatchEulerDiscreteScheduler'],
  processor: ['transformers', 'Qwen2_5_VLProcessor'],
};

/** The tokenizer/processor files, looked for in processor/ first, then text_encoder/ (the v1p2 repo has both). */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json'];

export interface DiffusersModelDir {
  root: string;
  /** model_index.json `_class_name` */
  pipelineClass: string;
  version: DiffusersVersion;
  transformerDir: string;
  /** Qwen2.5-VL config.json, generation_config.json and weights (a directory QwenVL.load opens as is) */
  textEncoderDir: string;
  /** tokenizer.json, tokenizer_config.json, chat template, preprocessor_config.json */
  tokenizerDir: string;
  vaeDir: string;
  schedulerDir: string;
}

/** True when `dir` holds a model_index.json (the diffusers layout); the official layout has none. */
export function isDiffusersDir(dir: string): boolean {
  return existsSync(join(dir, MODEL_INDEX));
}

function readJsonObject(path: string): Record<string, unknown> {
  let j: unknown;
  try {
    j = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Step1xError(`${path}: not valid JSON (${(e as Error).message})`, ExitCode.WEIGHTS);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Step1xError(`${path}: must hold a JSON object`, ExitCode.WEIGHTS);
  return j as Record<string, unknown>;
}

/** Parse model_index.json: the pipeline class (→ version) and each component's [library, class], all checked. */
export function readModelIndex(root: string): { pipelineClass: string; version: DiffusersVersion } {
  const path = join(root, MODEL_INDEX);
  const j = readJsonObject(path);
  const cls = j._class_name;
  const version = typeof cls === 'string' ? PIPELINE_VERSION[cls] : undefined;
  if (!version)
    throw new Step1xError(
      `${path}: _class_name ${JSON.stringify(cls)} is not a Step1X-Edit pipeline (known: ${Object.keys(PIPELINE_VERSION).join(', ')})`,
      ExitCode.WEIGHTS,
    );
  const bad: string[] = [];
  for (const [name, [lib, want]] of Object.entries(COMPONENT_CLASS)) {
    const v = j[name];
    if (!Array.isArray(v) || v.length !== 2 || v[0] !== lib || v[1] !== want)
      bad.push(`"${name}" is ${JSON.stringify(v ?? null)}, expected ${JSON.stringify([lib, want])}`);
  }
  if (bad.length) throw new Step1xError(`${path}: ${bad.join('; ')}`, ExitCode.WEIGHTS);
  return { pipelineClass: cls as string, version };
}

/** A safetensors weight set in `dir`: `<stem>.safetensors` or `<stem>.safetensors.index.json` with shards. */
export function hasWeights(dir: string, stem: string): boolean {
  return existsSync(join(dir, `${stem}.safetensors`)) || existsSync(join(dir, `${stem}.safetensors.index.json`));
}

/** Weights file or index of a component, whichever is there (the index when both). */
export function weightsPath(dir: string, stem: string): string {
  const idx = join(dir, `${stem}.safetensors.index.json`);
  return existsSync(idx) ? idx : join(dir, `${stem}.safetensors`);
}

function hasFile(dir: string, f: string): boolean {
  return existsSync(join(dir, f)) || existsSync(join(dir, `${f}.gz`));
}

/**
 * Open and check a diffusers-layout directory: model_index.json, every component directory and the files
 * each must hold (missing ones listed together, exit 4). Opens no weights.
 */
export function readDiffusersDir(dir: string): DiffusersModelDir {
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Step1xError(`model directory not found: ${dir}`, ExitCode.WEIGHTS);
  const { pipelineClass, version } = readModelIndex(root);
  const sub = (n: string) => join(root, n);
  const missing: string[] = [];
  const need = (d: string, f: string) => {
    if (!hasFile(sub(d), f)) missing.push(`${d}/${f}`);
  };
  need('transformer', 'config.json');
  if (!hasWeights(sub('transformer'), 'diffusion_pytorch_model')) missing.push('transformer/diffusion_pytorch_model.safetensors (or its .index.json and shards)');
  need('vae', 'config.json');
  if (!hasWeights(sub('vae'), 'diffusion_pytorch_model')) missing.push('vae/diffusion_pytorch_model.safetensors');
  need('text_encoder', 'config.json');
  need('text_encoder', 'generation_config.json');
  if (!hasWeights(sub('text_encoder'), 'model')) missing.push('text_encoder/model.safetensors.index.json (and its shards)');
  need('scheduler', 'scheduler_config.json');
  const tokenizerDir = [sub('processor'), sub('text_encoder')].find((d) => hasFile(d, 'tokenizer.json')) ?? sub('processor');
  const td = tokenizerDir === sub('processor') ? 'processor' : 'text_encoder';
  for (const f of TOKENIZER_FILES) need(td, f);
  if (missing.length)
    throw new Step1xError(
      `model files missing in ${root} (diffusers layout, ${pipelineClass} = ${version}):\n${missing.map((m) => `  - ${m}`).join('\n')}`,
      ExitCode.WEIGHTS,
    );
  return {
    root, pipelineClass, version, tokenizerDir,
    transformerDir: sub('transformer'), textEncoderDir: sub('text_encoder'), vaeDir: sub('vae'), schedulerDir: sub('scheduler'),
  };
}

/**
 * The diffusers-layout model directory (v12_e2e_tiny/model, the real v1p2 layout in miniature): model_index.json
 * tells the version, each component's files are checked, and text_encoder/ + processor/ open into the same
 * Qwen2.5-VL config, checkpoint, tokenizer and processor settings the official layout gives, validated as strictly.
 */
import { describe, expect, test } from '@jest/globals';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDiffusersDir, readDiffusersDir } from '../src/io/diffusers-layout.js';
import { modelFilesInDir, resolveModelFiles, tokenizerDirOf } from '../src/io/model-files.js';
import { loadQwenConfig, parseQwenConfig } from '../src/models/qwen25vl/config.js';
import { gatherEmbeddingRows, openQwenCheckpoint } from '../src/models/qwen25vl/loader.js';
import { QwenTokenizer } from '../src/models/qwen25vl/tokenizer.js';
import { loadGenerationConfig, loadPreprocessorConfig, parseGenerationConfig, parsePreprocessorConfig } from '../src/models/qwen25vl/hf-configs.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo } from './util/golden-io.js';

const caseDir = goldenCase('v12_e2e_tiny');
const modelDir = join(caseDir, 'model');
const spec = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
const io = goldenIo();

/** A writable copy of the model directory (symlinks followed) for the damage tests. */
function copyModel(): string {
  const d = mkdtempSync(join(tmpdir(), 'step1x-diffusers-'));
  cpSync(modelDir, d, { recursive: true, dereference: true });
  return d;
}

function thrown(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('did not throw');
}

describe('model_index.json and the component directories', () => {
  test('the version and every directory are told by the files', () => {
    expect(isDiffusersDir(modelDir)).toBe(true);
    const d = readDiffusersDir(modelDir);
    expect(d.version).toBe('v1.2');
    expect(d.pipelineClass).toBe('Step1XEditPipelineV1P2');
    expect(d.textEncoderDir).toBe(join(modelDir, 'text_encoder'));
    expect(d.tokenizerDir).toBe(join(modelDir, 'processor'));
    const files = modelFilesInDir(modelDir);
    expect(files.layout).toBe('diffusers');
    expect(files.qwenDir).toBe(d.textEncoderDir);
    expect(tokenizerDirOf(files)).toBe(d.tokenizerDir);
  });

  test('a wrong pipeline or component class, and every missing file, are named', () => {
    const d = copyModel();
    try {
      const idx = JSON.parse(readFileSync(join(d, 'model_index.json'), 'utf8'));
      writeFileSync(join(d, 'model_index.json'), JSON.stringify({ ...idx, _class_name: 'FluxPipeline' }));
      expect(thrown(() => readDiffusersDir(d))).toMatch(/_class_name "FluxPipeline" is not a Step1X-Edit pipeline/);
      writeFileSync(join(d, 'model_index.json'), JSON.stringify({ ...idx, vae: ['diffusers', 'AutoencoderTiny'] }));
      expect(thrown(() => readDiffusersDir(d))).toMatch(/"vae" is \["diffusers","AutoencoderTiny"\], expected \["diffusers","AutoencoderKL"\]/);
      writeFileSync(join(d, 'model_index.json'), JSON.stringify(idx));
      unlinkSync(join(d, 'text_encoder/generation_config.json'));
      unlinkSync(join(d, 'processor/preprocessor_config.json'));
      unlinkSync(join(d, 'vae/diffusion_pytorch_model.safetensors'));
      const msg = thrown(() => readDiffusersDir(d));
      expect(msg).toMatch(/text_encoder\/generation_config.json/);
      expect(msg).toMatch(/processor\/preprocessor_config.json/);
      expect(msg).toMatch(/vae\/diffusion_pytorch_model.safetensors/);
      expect(msg).toMatch(/v1\.2/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('text_encoder/ (transformers save_pretrained) into the Qwen2.5-VL objects', () => {
  test('config.json with text_config parses to the tiny Qwen; top level and text_config must agree', async () => {
    const cfg = await loadQwenConfig(join(modelDir, 'text_encoder'));
    expect(cfg.text).toMatchObject({ hiddenSize: 16, numHiddenLayers: 2, numAttentionHeads: 2, numKeyValueHeads: 1, mropeSection: [1, 1, 2], vocabSize: 152064 });
    expect(cfg.vision).toMatchObject({ depth: 4, hiddenSize: 32, outHiddenSize: 16, fullattBlockIndexes: [1, 3] });
    const raw = JSON.parse(readFileSync(join(modelDir, 'text_encoder/config.json'), 'utf8'));
    raw.text_config.num_hidden_layers = 3;
    expect(thrown(() => parseQwenConfig(raw, 'config.json'))).toMatch(/"num_hidden_layers" is 2 at the top level but 3 in text_config/);
  });

  test('the sharded weights open through the index with the exact key check of the official layout', async () => {
    const te = join(modelDir, 'text_encoder');
    const ck = await openQwenCheckpoint(te, await loadQwenConfig(te));
    try {
      expect(ck.has('model.embed_tokens.weight')).toBe(true);
      // text_embeds of the kept span = embed_tokens rows of its text tokens (fork: text_token_mapping input)
      const f = await io('v12_e2e_tiny');
      const ids = Array.from(await f.readI32('mid.input_ids.cond'));
      const mask = Array.from(await f.readI32('mid.vision_mask.cond'));
      const want = await f.readF32('mid.text_embeds.cond');
      const from = spec.strings.cond.kept_from as number;
      const rows = ids.slice(from);
      const got = await gatherEmbeddingRows(ck, Int32Array.from(rows));
      let worst = 0, compared = 0;
      for (let i = 0; i < rows.length; i++) {
        if (mask[i]) continue;
        for (let c = 0; c < 16; c++) worst = Math.max(worst, Math.abs(got[i * 16 + c] - want[i * 16 + c]));
        compared++;
      }
      expect(compared).toBeGreaterThan(20);
      if (worst > 1e-6) throw new Error(`text rows of mid.text_embeds.cond differ by ${worst}`);
    } finally {
      await ck.close();
    }
  });

  test('generation_config.json: the real values, and GenerationConfig defaults where absent', () => {
    const g = loadGenerationConfig(join(modelDir, 'text_encoder'));
    expect(g).toEqual({ bosTokenId: 151643, eosTokenIds: [151645, 151643], padTokenId: 151643, doSample: true, repetitionPenalty: 1.05, temperature: 1e-6, topK: 50, topP: 1 });
    expect(thrown(() => parseGenerationConfig({ bos_token_id: 1, eos_token_id: [], }))).toMatch(/eos_token_id/);
    expect(thrown(() => parseGenerationConfig({ bos_token_id: 1, eos_token_id: 2, temperature: -1 }))).toMatch(/"temperature" must be a positive number/);
  });
});

describe('processor/ (tokenizer + image processor files)', () => {
  test('the tokenizer loads with chat_template.jinja, and each segment of the fork tokenises to its tokens', () => {
    const tok = QwenTokenizer.load(join(modelDir, 'processor'));
    expect(tok.chatTemplate).toContain('add_vision_id');
    for (const side of ['cond', 'uncond']) {
      const s = spec.strings[side];
      const got: string[] = [];
      for (const seg of s.segments) got.push(...tok.tokens(seg.text));
      // the processor expands the one <|image_pad|> to the merged-token count before tokenising
      const pads = (s.tokens as string[]).filter((t) => t === '<|image_pad|>').length;
      const at = got.indexOf('<|image_pad|>');
      got.splice(at, 1, ...Array(pads).fill('<|image_pad|>'));
      expect(got).toEqual(s.tokens);
    }
  });

  test('preprocessor_config.json is read, and a geometry our processor does not have is refused', () => {
    expect(loadPreprocessorConfig(join(modelDir, 'processor'))).toEqual({ minPixels: 200704, maxPixels: 254016, resample: 3 });
    expect(thrown(() => parsePreprocessorConfig({ patch_size: 16 }))).toMatch(/"patch_size" is 16; Qwen2.5-VL's processor needs 14/);
    expect(thrown(() => parsePreprocessorConfig({ image_mean: [0.5, 0.5, 0.5] }))).toMatch(/image_mean/);
    expect(thrown(() => parsePreprocessorConfig({ min_pixels: 10, max_pixels: 5 }))).toMatch(/min_pixels 10 exceeds max_pixels 5/);
  });
});

describe('model resolution knows the layout', () => {
  test('--version must match what a directory holds; v1.2 is diffusers-only; the HF cache finds the v1p2 snapshot', () => {
    expect(thrown(() => modelFilesInDir(modelDir, modelDir, { version: 'v1.1' }))).toMatch(/holds a diffusers-layout v1\.2 model .*--version v1\.2/);
    expect(modelFilesInDir(modelDir, modelDir, { version: 'v1.2' }).layout).toBe('diffusers');
    const official = join(goldenCase('tiny_e2e_v11'), 'model');
    expect(thrown(() => modelFilesInDir(official, official, { version: 'v1.2' }))).toMatch(/official layout .*v1\.2 ships only in the diffusers layout/);
    const hub = mkdtempSync(join(tmpdir(), 'step1x-hub-'));
    const saved = { HF_HUB_CACHE: process.env.HF_HUB_CACHE, STEP1X_MODEL: process.env.STEP1X_MODEL };
    try {
      const snap = join(hub, 'models--stepfun-ai--Step1X-Edit-v1p2', 'snapshots', 'abc');
      cpSync(modelDir, snap, { recursive: true, dereference: true });
      process.env.HF_HUB_CACHE = hub;
      delete process.env.STEP1X_MODEL;
      const f = resolveModelFiles(undefined, { version: 'v1.2' });
      expect([f.layout, f.diffusers?.version, f.qwenDir]).toEqual(['diffusers', 'v1.2', join(snap, 'text_encoder')]);
      rmSync(snap, { recursive: true });
      expect(thrown(() => resolveModelFiles(undefined, { version: 'v1.2' }))).toMatch(/no stepfun-ai\/Step1X-Edit-v1p2 snapshot.*step1x download --version v1\.2/);
    } finally {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
      rmSync(hub, { recursive: true, force: true });
    }
  });
});

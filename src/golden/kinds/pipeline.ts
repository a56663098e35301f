/**
 * Kinds `pipeline` (pipeline_tiny, pipeline_v11_tiny) and `t2i` (t2i_tiny): the edit / text-to-image
 * pipeline with the MLLM replaced by fixed embeddings (`in.llm_embedding`, `in.mask`):
 *   pipeline: input_process_image → VAE encode (mean) → prepare → denoise with CFG → unpack → decode →
 *             clamp/truncate → resize back;
 *   t2i:      prepare_t2i (noise tokens alone) → denoise_t2i → unpack → decode at spec.width × height.
 * Weights are `dit.safetensors` + `vae.safetensors` in the case directory with `spec.dit/connector/ae`.
 * The official behaviour (input resize filter, timesteps_truncate) comes from the case (official.ts:
 * behaviourOfCase); the checkpoint version from the weights (checked against spec.version). Stage names
 * map from the e2e names the stages trace.
 */
import { join } from 'node:path';
import type { GoldenContext } from '../registry.js';
import type { ModelFiles } from '../../io/model-files.js';
import { resize } from '../../io/resize.js';
import { inputProcessImage } from '../../models/qwen25vl/processor.js';
import { imageToModelInput, runDenoise, runVaeDecode, runVaeEncode, type Trace } from '../../pipeline/stages.js';
import { behaviourOfCase } from '../../pipeline/official.js';
import { parseVersion } from '../../models/dit-config.js';
import { fail } from '../../errors.js';
import { guidedForReference } from './guided.js';

const NAMES: Record<string, string> = {
  'mid.ref_moments': 'stage4.moments',
  'mid.ref_latent': 'stage4.ref_latent',
  'mid.timesteps': 'timesteps',
  'mid.img': 'stage5.img',
  'mid.img_ids': 'stage5.img_ids',
  'mid.txt_ids': 'stage5.txt_ids',
  'mid.latent_packed': 'stage6.latent_packed',
  'mid.latent': 'stage7.latent',
  'mid.decoded': 'stage8.decoded',
  'out.rgb_small_u8': 'stage10.rgb_small_u8',
};

export async function run(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec;
  const g = ctx.gpu;
  const t2i = ctx.caseJson.kind === 't2i';
  const beh = behaviourOfCase(ctx.caseJson);
  const files: ModelFiles = {
    source: ctx.caseDir,
    dit: join(ctx.caseDir, 'dit.safetensors'),
    vae: join(ctx.caseDir, 'vae.safetensors'),
    qwenDir: '',
    hparams: { dit: spec.dit, connector: spec.connector, ae: spec.ae },
  };
  const trace: Trace = (name, data, shape, kind) => {
    const step = /^mid\.step(\d+)\.(.*)$/.exec(name);
    const mapped = step ? `stage6.step${step[1]}.${step[2]}` : NAMES[name];
    if (!mapped) return;
    if (step && step[2] === 'pred_guided') ctx.emit(mapped, ...guidedForReference(beh, data as Float32Array, shape[1], shape[2], !t2i));
    else ctx.emit(mapped, data, shape, kind);
  };
  const f = Math.fround;
  let refLatent: Float32Array | undefined;
  let photo: { width: number; height: number; data: Uint8Array } | undefined;
  let lh: number, lw: number;
  if (t2i) {
    if (!Number.isInteger(spec.height / 16) || !Number.isInteger(spec.width / 16)) fail(`t2i golden: spec.height/width ${spec.height}x${spec.width} must be multiples of 16`);
    lh = spec.height / 8;
    lw = spec.width / 8;
  } else {
    const [H0, W0] = ctx.io.tensors.get('in.photo_u8')!.shape;
    photo = { width: W0, height: H0, data: new Uint8Array(await ctx.io.readBytes('in.photo_u8')) };
    const ref = inputProcessImage(photo, spec.size_level, beh.inputResize);
    ctx.emit('stage1.ref_resized_u8', ref.data, [ref.height, ref.width, 3], 'u8');
    const x = imageToModelInput(ref);
    ctx.emit('stage2.ref_01', Float32Array.from(x, (v) => f(f(v + 1) / 2)), [1, 3, ref.height, ref.width]);
    ctx.emit('stage3.encoder_in', x, [1, 3, ref.height, ref.width]);
    refLatent = await runVaeEncode(g, files, ref, { trace });
    lh = ref.height / 8;
    lw = ref.width / 8;
  }

  const emb = await ctx.input('in.llm_embedding');
  const mask = await ctx.input('in.mask');
  const T = ctx.io.tensors.get('in.mask')!.shape[1];
  const packed = await runDenoise(g, files, {
    noise: await ctx.input('in.noise'), refLatent, lh, lw, llmEmbedding: emb, mask, T,
    steps: spec.num_steps, cfg: spec.cfg_guidance, cfgTruncate: beh.cfgTruncate,
    version: spec.version !== undefined ? parseVersion(spec.version, 'spec.version') : undefined, trace,
  });
  const small = await runVaeDecode(g, files, packed, lh, lw, (name, data, shape, kind) => {
    trace(name, data, shape, kind);
    if (name === 'mid.decoded') {
      const img01 = Float32Array.from(data as Float32Array, (v) => f(f(Math.min(1, Math.max(-1, v)) * 0.5) + 0.5));
      ctx.emit('stage9.img01', img01, shape);
    }
  });
  // t2i: output_process_image resizes to (width, height), the decoded size
  const out = photo ? resize(small, photo.width, photo.height, 'bicubic') : small;
  ctx.emit('out.rgb_u8', out.data, [out.height, out.width, 3], 'u8');
}

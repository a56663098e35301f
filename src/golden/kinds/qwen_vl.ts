/**
 * Golden kind `qwen_vl` (qwen_vl_tiny, qwen_vl_tiny_mask): Qwen2.5-VL forward + Step1X embedder
 * from `config.json` + weights in the case directory and `in.input_ids`, `in.attention_mask`,
 * `in.pixel_values`, `in.image_grid_thw`. Emits the vision intermediates (patch embed, (h, w) ids,
 * window index, cu_window_seqlens, per-block outputs, vision_out), M-RoPE position ids and delta,
 * inputs_embeds, hidden_states / decoder_layer_out / final_norm and the embedder outputs.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { GoldenContext } from '../registry.js';
import { behaviourOfCase } from '../../pipeline/official.js';
import { QwenVL, type QwenLoadOptions } from '../../models/qwen25vl/model.js';
import { embedPrompts } from '../../models/qwen25vl/embedder.js';
import { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import { buildStep1xInputIds } from '../../models/qwen25vl/prompt.js';
import { getWindowIndex, visionRotPosIds, type GridThw } from '../../models/qwen25vl/positions.js';
import { fail } from '../../errors.js';

export async function run(ctx: GoldenContext): Promise<void> {
  await runQwenVl(ctx);
}

/** `load` lets tests force streaming under a small GPU budget. */
export async function runQwenVl(ctx: GoldenContext, load: QwenLoadOptions = {}): Promise<void> {
  const g = ctx.gpu, spec = ctx.spec ?? {};
  const dir = join(ctx.caseDir, spec.weights_dir ?? '.');
  const ids = await ctx.inputInt('in.input_ids');
  const mask = ctx.has('in.attention_mask') ? await ctx.inputInt('in.attention_mask') : undefined;
  const px = await ctx.input('in.pixel_values');
  const gt = await ctx.inputInt('in.image_grid_thw');
  if (gt.length % 3) fail(`in.image_grid_thw has ${gt.length} values, not [n, 3]`);
  const grids: GridThw[] = [];
  for (let i = 0; i < gt.length; i += 3) grids.push([gt[i], gt[i + 1], gt[i + 2]]);
  const L = ids.length;
  await emitRealIds(ctx, grids);

  // the case directory may also hold io.safetensors: name the weight files the spec lists (an index
  // json means a sharded directory, which Checkpoint.open resolves itself)
  const files = (spec.weights_files as string[] | undefined) ?? [];
  const shards = files.filter((f) => f.endsWith('.safetensors'));
  const single = join(dir, 'model.safetensors');
  const weights = files.some((f) => f.endsWith('.safetensors.index.json')) ? undefined
    : shards.length ? shards.map((f) => join(dir, f)) : existsSync(single) ? single : undefined;
  const model = await QwenVL.load(g, dir, { weights, ...load });
  try {
    const v = model.cfg.vision, D = model.cfg.text.hiddenSize, nl = model.cfg.text.numHiddenLayers;
    ctx.log(`qwen_vl: L=${L}, grids ${JSON.stringify(grids)}, streamed ${JSON.stringify(model.streamed)}`);
    const N = grids.reduce((s, [t, h, w]) => s + t * h * w, 0);
    ctx.emit('mid.vision_rot_pos_ids', visionRotPosIds(grids, v.spatialMergeSize), [N, 2], 'i64');
    const wi = getWindowIndex(grids, v.windowSize, v.spatialMergeSize, v.patchSize);
    ctx.emit('mid.vision_window_index', wi.windowIndex, [wi.windowIndex.length], 'i64');
    ctx.emit('mid.vision_cu_window_seqlens', Int32Array.from(wi.cuWindowSeqlens), [wi.cuWindowSeqlens.length], 'i64');

    const blocks = new Float32Array(v.depth * N * v.hiddenSize);
    const hidden = new Float32Array((nl + 1) * L * D);
    const layerOut = new Float32Array(nl * L * D);
    const maxLength = spec.max_length ?? 640;
    // First-generator cases pin the May 2025 flash_attention_2 semantics; later ones the current SDPA ones.
    const textAttention = behaviourOfCase(ctx.caseJson).textAttention;
    const res = await embedPrompts(g, model, [{ inputIds: ids, attentionMask: mask, pixelValues: px, gridThw: grids, textAttention }], {
      maxLength,
      dropPrefixTokens: spec.drop_prefix_tokens ?? 217,
      trace: {
        vision: {
          patchEmbed: async (t) => ctx.emit('mid.vision_patch_embed', await g.readF32(t), [...t.shape]),
          block: async (i, t) => blocks.set(await g.readF32(t), i * N * v.hiddenSize),
        },
        visionOut: async (t) => ctx.emit('mid.vision_out', await g.readF32(t), [...t.shape]),
        positions: async (pos, delta) => {
          ctx.emit('mid.position_ids', pos, [3, L], 'i64');
          ctx.emit('mid.rope_deltas', Int32Array.of(delta), [1], 'i64');
        },
        inputsEmbeds: async (t) => {
          const e = await g.readF32(t);
          ctx.emit('mid.inputs_embeds', e, [L, D]);
          hidden.set(e, 0);
        },
        layer: async (i, t) => {
          const h = await g.readF32(t);
          layerOut.set(h, i * L * D);
          // hidden_states[i + 1] is layer i's output, except the last entry, which is the final norm
          if (i + 1 < nl) hidden.set(h, (i + 1) * L * D);
        },
      },
      onFinalNorm: (_b, data) => {
        hidden.set(data, nl * L * D);
        ctx.emit('mid.final_norm', data, [L, D]);
      },
    });
    ctx.emit('mid.vision_block_out', blocks, [v.depth, N, v.hiddenSize]);
    ctx.emit('mid.hidden_states', hidden, [nl + 1, L, D]);
    ctx.emit('mid.decoder_layer_out', layerOut, [nl, L, D]);
    ctx.emit('out.embedder_out', res.embeddingsF32, [maxLength, D]);
    ctx.emit('out.embedder_out_bf16', res.embeddings, [maxLength, D]);
    ctx.emit('out.embedder_mask', res.mask, [maxLength], 'i64');
  } finally {
    await model.dispose();
  }
}

/**
 * `mid.input_ids_real`: the real Qwen2 ids the Step1X embedder builds from `spec.caption` and the image
 * grid (before the case's tiny id map), with the real tokenizer of the sibling `tiny_e2e` case (the same
 * in shared/golden and in the repo's copies); checked against `in.input_ids` through `spec.token_id_map`.
 * Emitted for every case with a `spec.caption`; without that tokenizer the tensor stays listed as not computed.
 */
async function emitRealIds(ctx: GoldenContext, grids: GridThw[]): Promise<void> {
  const spec = ctx.spec ?? {};
  const tokDir = join(dirname(resolve(ctx.caseDir)), 'tiny_e2e', 'model', 'Qwen2.5-VL-7B-Instruct');
  if (typeof spec.caption !== 'string' || !existsSync(tokDir)) return;
  const merge = 4; // spatial_merge_size² of Step1X's processor
  const imageTokens = grids.reduce((s, [t, h, w]) => s + (t * h * w) / merge, 0);
  const p = buildStep1xInputIds(QwenTokenizer.load(tokDir), spec.caption, imageTokens, { dropPrefix: spec.drop_prefix_tokens });
  ctx.emit('mid.input_ids_real', p.inputIds, [p.inputIds.length], 'i64');
  // in.input_ids = tiny_id(real): r >= 151643 → 1000 + (r − 151643); r == 0 → 0; else 1 + (r mod 997)
  if (typeof spec.token_id_map === 'string' && spec.token_id_map.includes('1+(r % 997)')) {
    const tiny = Int32Array.from(p.inputIds, (r) => (r >= 151643 ? 1000 + (r - 151643) : r === 0 ? 0 : 1 + (r % 997)));
    ctx.emit('in.input_ids', tiny, [tiny.length], 'i64');
  }
}

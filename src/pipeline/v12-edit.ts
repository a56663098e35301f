/**
 * The Step1X-Edit v1.2 edit (the fork's Step1XEditPipelineV1P2.__call__, thinking and reflection off; rule by
 * rule in ../shared/golden/README.md "Generator version 3", pinned by v12_e2e_tiny):
 *   photo → LANCZOS to the size level → torch uint8 bicubic AA to smart_resize (Qwen2VLImageProcessorFast)
 *   → pixel values (rescale and normalize fused) → Qwen2.5-VL without attention mask (M-RoPE from ids > 0)
 *   for the prompt and "" → kept span (90 dropped), text embeddings, txt_ids; photo → bilinear AA → VAE
 *   posterior sampled with ε; FlowMatch schedule, CFG at every step; decode, round, PIL bicubic back.
 * `emit` receives every intermediate under the golden names (and 'mid.pixel_values', all rows).
 */
import type { Gpu } from '../runtime/gpu.js';
import { ExitCode, fail } from '../errors.js';
import { resize, type RgbImage } from '../io/resize.js';
import { resizeTorchU8 } from '../io/resize-torch.js';
import { resizeTorchF32Bilinear } from '../io/resize-torch-f32.js';
import type { DiffusersModelDir } from '../io/diffusers-layout.js';
import { QwenVL } from '../models/qwen25vl/model.js';
import { QwenTokenizer } from '../models/qwen25vl/tokenizer.js';
import { gatherEmbeddingRows } from '../models/qwen25vl/loader.js';
import { buildV12InputIds } from '../models/qwen25vl/prompt-v12.js';
import { CLIP_MEAN, CLIP_STD, inputProcessSize, patchify, smartResize } from '../models/qwen25vl/processor.js';
import { Step1XEdit } from '../models/dit.js';
import { AutoEncoder } from '../models/vae.js';
import { v12TextIds } from './v12-ids.js';
import { v12Denoise, v12Schedule } from './v12-sampling.js';
import { imageIds, pack2x2Host, referenceIds, unpack2x2Host } from './prepare.js';
import { initialNoise, posteriorEps } from './rng.js';

const fr = Math.fround;

export type V12Emit = (name: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind?: 'f32' | 'i64' | 'u8') => void;

/** The fork's defaults (pipeline_step1x_edit_v1p2.py): 28 steps, true CFG 6, size level 1024, processor pixels 256·28² … 400·28². */
export const V12_DEFAULTS = { steps: 28, cfg: 6.0, sizeLevel: 1024, processorPixels: { min_pixels: 200704, max_pixels: 313600 } } as const;

export interface V12EditOptions {
  prompt: string;
  sizeLevel: number;
  steps: number;
  cfg: number;
  /** initial noise [1, 16, h/8, w/8]; default initialNoise(seed) */
  noise?: Float32Array;
  /** ε of the sampled reference latent [1, 16, h/8, w/8]; default posteriorEps(seed) */
  refEps?: Float32Array;
  seed?: number;
  processorPixels?: { min_pixels?: number; max_pixels?: number };
  /** the slow (PIL bicubic) image processor instead of the fast one: what the case records as NOT the reference */
  slowProcessor?: boolean;
}

const emitU8 = (emit: V12Emit, name: string, img: RgbImage) => emit(name, img.data, [img.height, img.width, 3], 'u8');

export async function runV12Edit(g: Gpu, d: DiffusersModelDir, photo: RgbImage, o: V12EditOptions, emitAll: V12Emit = () => undefined): Promise<{ small: RgbImage; image: RgbImage }> {
  if (d.version !== 'v1.2') fail(`${d.root}: a ${d.version} model; the v1.2 edit needs a v1.2 model`, ExitCode.WEIGHTS);
    // ---- images
    const [w, h] = inputProcessSize(photo.width, photo.height, o.sizeLevel);
    const ref = resize(photo, w, h, 'lanczos');
    emitU8(emitAll, 'mid.ref_resized_u8', ref);
    const px = o.processorPixels ?? {};
    const [rh, rw] = smartResize(ref.height, ref.width, 28, px.min_pixels, px.max_pixels, 'processor');
    const qimg = resizeTorchU8(ref, rw, rh, 'bicubic');
    emitU8(emitAll, 'mid.qwen_resized_u8', qimg);
    // the fast processor fuses rescale and normalize: (x − 255·mean) / (255·std) in f32
    const { pixelValues, gridThw } = patchify(qimg, 1, CLIP_MEAN.map((m) => fr(m * 255)), CLIP_STD.map((s) => fr(s * 255)));
    emitAll('mid.image_grid_thw', Int32Array.from(gridThw), [1, 3], 'i64');
    // the edit from the pixel values on: run with the fast processor's (the reference), then with the slow
    // (PIL) processor's, whose outputs the case records as mid.alt_slow_processor.* (NOT the reference)
    const edit = async (pixelValues: Float32Array, emit: V12Emit): Promise<void> => {
      // ---- Qwen2.5-VL for the prompt and the negative prompt ""
      const tok = QwenTokenizer.load(d.tokenizerDir);
      const qwen = await QwenVL.load(g, d.textEncoderDir);
      const sides: Record<string, { emb: Float32Array; text: Float32Array; mask: Int32Array; ids: Float32Array; T: number }> = {};
      try {
        const D = qwen.cfg.text.hiddenSize;
        let visionOut: Float32Array | undefined;
        for (const side of ['cond', 'uncond'] as const) {
          const p = buildV12InputIds(tok, side === 'cond' ? o.prompt : '', (gridThw[1] * gridThw[2]) / 4);
          const L = p.inputIds.length;
          emit(`mid.input_ids.${side}`, p.inputIds, [L], 'i64');
          const ropeMask = Int32Array.from(p.inputIds, (v) => (v > 0 ? 1 : 0)); // what get_rope_index sees; the LLM runs unmasked
          emit(`mid.attention_mask.${side}`, ropeMask, [L], 'i64');
          let pos: Int32Array | undefined, delta = 0;
          const [hs] = await qwen.forward(g, [{ inputIds: p.inputIds, pixelValues, gridThw: [gridThw], ropeMask }], {
            positions: async (ids, dl) => void ((pos = ids), (delta = dl)),
            visionOut: async (t) => void (visionOut ??= await g.readF32(t)),
          });
          const last = await g.readF32(hs);
          hs.dispose();
          if (!pos) fail('v12_e2e: the Qwen forward reported no position ids', ExitCode.GPU);
          emit(`mid.position_ids.${side}`, pos, [3, L], 'i64');
          emit(`mid.rope_deltas.${side}`, Int32Array.of(delta), [1], 'i64');
          emit(`mid.last_hidden.${side}`, last, [L, D]);
          const T = p.keepLen, kept = p.inputIds.subarray(p.keepStart, p.keepStart + T);
          const emb = last.slice(p.keepStart * D, (p.keepStart + T) * D);
          const vmask = Int32Array.from(kept, (id) => (id === qwen.cfg.imageTokenId ? 1 : 0));
          const text = await gatherEmbeddingRows(qwen.ckpt, kept);
          let v = 0;
          for (let k = 0; k < T; k++) if (vmask[k]) text.set(visionOut!.subarray(v * D, ++v * D), k * D);
          const tmask = p.textMask.slice(p.keepStart, p.keepStart + T);
          const tid = v12TextIds(pos, L, p.keepStart, T, vmask, [ref.width, ref.height], [rw, rh]);
          emit(`mid.prompt_embeds.${side}`, emb, [T, D]);
          emit(`mid.prompt_mask.${side}`, new Int32Array(T).fill(1), [T], 'i64');
          emit(`mid.text_embeds.${side}`, text, [T, D]);
          emit(`mid.text_mask.${side}`, tmask, [T], 'i64');
          emit(`mid.vision_mask.${side}`, vmask, [T], 'i64');
          emit(`mid.vision_tokens_thw.${side}`, Int32Array.from(gridThw, (v) => Math.floor(v / 2)), [3], 'i64');
          emit(`mid.pos_kept_shifted.${side}`, tid.posKeptShifted, [T, 3]);
          emit(`mid.txt_ids.${side}`, tid.txtIds, [T, 3]);
          // source pixel → vision token (the fork's _get_affine_mat_from_source): x_tok = x (Rw − 1)/(Sw − 1)/28 − 13.5/28
          emit(`mid.vision_affine_mat.${side}`, Float32Array.of((rw - 1) / (ref.width - 1) / 28, 0, -13.5 / 28, 0, (rh - 1) / (ref.height - 1) / 28, -13.5 / 28, 0, 0, 1), [3, 3]);
          sides[side] = { emb, text, mask: tmask, ids: tid.txtIds, T };
        }
        emit('mid.vision_out', visionOut!, [visionOut!.length / D, D]);
      } finally {
        await qwen.dispose();
      }
      // ---- reference latent: bilinear AA of the ORIGINAL photo, posterior sampled with in.sample_eps
      const vae = await AutoEncoder.load(g, d.vaeDir);
      const lh = h / 8, lw = w / 8, C = vae.config.z_channels;
      let latent: Float32Array;
      try {
        const planes = new Float32Array(3 * photo.width * photo.height);
        const n = photo.width * photo.height;
        for (let c = 0; c < 3; c++) for (let q = 0; q < n; q++) planes[c * n + q] = fr(fr(photo.data[q * 3 + c] / 255) * 2 - 1);
        const vin = resizeTorchF32Bilinear(planes, photo.height, photo.width, h, w);
        emit('mid.vae_input', vin, [1, 3, h, w]);
        const x = g.upload(vin, [1, 3, h, w]);
        const enc = await vae.encode(x, { sample: o.refEps ?? posteriorEps(o.seed ?? 0, lh, lw, C) });
        x.dispose();
        emit('mid.ref_moments', await g.readF32(enc.moments), [...enc.moments.shape]);
        const refLatent = await g.readF32(enc.latent);
        for (const t of [enc.moments, enc.mean, enc.logvar, enc.latent]) t.dispose();
        emit('mid.ref_latent', refLatent, [1, C, lh, lw]);
        const refPacked = pack2x2Host(refLatent, [1, C, lh, lw]), noise = pack2x2Host(o.noise ?? initialNoise(o.seed ?? 0, lh, lw, C), [1, C, lh, lw]);
        const N = (lh / 2) * (lw / 2), Cp = 4 * C;
        emit('mid.ref_latent_packed', refPacked, [1, N, Cp]);
        emit('mid.noise_packed', noise, [1, N, Cp]);
        const imgIdsAll = new Float32Array(2 * N * 3);
        imgIdsAll.set(imageIds(1, lh / 2, lw / 2));
        imgIdsAll.set(referenceIds(lh / 2, lw / 2, 'v1.2'), N * 3);
        emit('mid.img_ids', imgIdsAll, [2 * N, 3]);
        // ---- denoise
        const sched = v12Schedule(o.steps, N);
        emit('mid.sigmas', sched.sigmas, [sched.sigmas.length]);
        emit('mid.timesteps', sched.timesteps, [sched.timesteps.length]);
        const dit = await Step1XEdit.open(g, d.transformerDir);
        try {
          const adds: Record<string, Float32Array> = {};
          for (const s of ['cond', 'uncond']) adds[s] = await dit.textTokenMapping(sides[s].text, sides[s].mask, 1, sides[s].T);
          let calls = 0;
          const packed = await v12Denoise(
            async (side, lat, t) => {
              const s = sides[side];
              const first = calls++ < 2; // step 0: cond, then uncond
              const taps: Record<string, string> = { 'mid.connector.txt': 'connector_out', 'mid.connector.y': 'pooled', 'mid.context_in': 'context_in' };
              const out = await dit.forward(
                { img: cat(lat, refPacked), imgIds: imgIdsAll, txtIds: s.ids, timesteps: [t], tVec: [t], llmEmbedding: s.emb, mask: new Float32Array(s.T).fill(1), contextAdd: adds[side], B: 1, L: 2 * N, T: s.T },
                first ? async (name, v, shape) => void (taps[name] && emit(`mid.step0.${taps[name]}.${side}`, v instanceof Float32Array ? v : await g.readF32(v), shape)) : undefined,
              );
              const host = await g.readF32(out);
              out.dispose();
              if (first) {
                if (side === 'cond') emit('mid.step0.transformer_timestep', Float32Array.of(t), [1]);
                emit(`mid.step0.raw_out.${side}`, host, [1, 2 * N, Cp]);
                // the fork records text_token_mapping(text_embeds) before text_mask multiplies it
                const raw = await dit.textTokenMapping(s.text, new Int32Array(s.T).fill(1), 1, s.T);
                emit(`mid.step0.text_token_mapping.${side}`, raw, [1, s.T, raw.length / s.T]);
              }
              return host.slice(0, N * Cp);
            },
            noise, sched,
            { cfg: o.cfg, channels: Cp, onStep: (st) => {
              emit(`mid.step${st.step}.pred_cond`, st.predCond, [1, N, Cp]);
              emit(`mid.step${st.step}.pred_uncond`, st.predUncond, [1, N, Cp]);
              emit(`mid.step${st.step}.pred_guided`, st.predGuided, [1, N, Cp]);
              emit(`mid.step${st.step}.latent_after`, st.latentAfter, [1, N, Cp]);
            } },
          );
          latent = unpack2x2Host(packed, 1, C, lh / 2, lw / 2);
        } finally {
          await dit.close();
        }
        // ---- decode: latents / scaling + shift, then round(255 · clamp(x/2 + 0.5)) and PIL bicubic back
        const z = Float32Array.from(latent, (v) => fr(fr(v / fr(vae.config.scale_factor)) + fr(vae.config.shift_factor)));
        emit('mid.vae_decode_input', z, [1, C, lh, lw]);
        const zt = g.upload(z, [1, C, lh, lw]);
        const dec = await vae.decoder.forward(zt);
        zt.dispose();
        const decoded = await g.readF32(dec);
        dec.dispose();
        emit('mid.decoded', decoded, [1, 3, h, w]);
        const small = new Uint8Array(h * w * 3);
        for (let c = 0; c < 3; c++) for (let q = 0; q < h * w; q++) small[q * 3 + c] = Math.round(255 * Math.min(1, Math.max(0, fr(fr(decoded[c * h * w + q] / 2) + 0.5))));
        const smallImg = { width: w, height: h, data: small };
        emitU8(emit, 'out.rgb_small_u8', smallImg);
        const image = resize(smallImg, photo.width, photo.height, 'bicubic');
      emitU8(emit, 'out.rgb_u8', image);
      result = { small: smallImg, image };
      } finally {
        vae.dispose();
      }
    };
    const pv = o.slowProcessor ? patchify(resize(ref, rw, rh, 'bicubic')).pixelValues : pixelValues;
    emitAll('mid.pixel_values', pv, [pv.length / 1176, 1176]);
    let result: { small: RgbImage; image: RgbImage } | undefined;
    await edit(pv, emitAll);
    return result!;
}

function cat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Golden kind `v12_e2e` (v12_e2e_tiny): a whole Step1X-Edit v1.2 edit (the fork's Step1XEditPipelineV1P2,
 * thinking and reflection off) from the case's diffusers-layout `model/` (the `spec.shared_files` taken
 * from the sibling cases, sha256 checked, when the copy does not hold them), `in.photo_u8`,
 * `in.sample_eps`, `in.noise` and `spec.prompt / size_level / num_steps / cfg`:
 *   photo → LANCZOS to the size level (mid.ref_resized_u8) → torch uint8 bicubic AA to smart_resize
 *   (mid.qwen_resized_u8) → pixel values → Qwen2.5-VL (no attention mask, M-RoPE from ids > 0) for the
 *   prompt and "" → kept span, text embeddings, txt_ids; photo → bilinear AA → VAE posterior sampled with
 *   in.sample_eps; FlowMatch schedule, CFG at every step; decode, round, PIL bicubic back to the photo size.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { GoldenContext } from '../registry.js';
import { ExitCode, fail } from '../../errors.js';
import { resize, type RgbImage } from '../../io/resize.js';
import { resizeTorchF32Bilinear, resizeTorchU8Bicubic } from '../../io/resize-torch.js';
import { readDiffusersDir } from '../../io/diffusers-layout.js';
import { QwenVL } from '../../models/qwen25vl/model.js';
import { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import { gatherEmbeddingRows } from '../../models/qwen25vl/loader.js';
import { buildV12InputIds } from '../../models/qwen25vl/prompt-v12.js';
import { CLIP_MEAN, CLIP_STD, inputProcessSize, patchify, smartResize } from '../../models/qwen25vl/processor.js';
import { Step1XEdit } from '../../models/dit.js';
import { AutoEncoder } from '../../models/vae.js';
import { v12TextIds } from '../../pipeline/v12-ids.js';
import { v12Denoise, v12Schedule } from '../../pipeline/v12-sampling.js';
import { imageIds, pack2x2Host, referenceIds, unpack2x2Host } from '../../pipeline/prepare.js';

const fr = Math.fround;

function sha256(path: string): string {
  const raw = readFileSync(path);
  return createHash('sha256').update(path.endsWith('.gz') ? gunzipSync(raw) : raw).digest('hex');
}

/** The case's model directory, or a temporary one with the shared files linked in (sha256 checked). */
function assembleModel(caseDir: string, spec: any): { dir: string; cleanup: () => void } {
  const model = join(caseDir, spec.model_dir ?? 'model');
  const shared = (spec.shared_files ?? []) as { from: string; to: string; sha256: string }[];
  const present = (p: string) => [p, `${p}.gz`].find((q) => existsSync(q));
  if (shared.every((s) => present(join(caseDir, s.to)))) return { dir: model, cleanup: () => undefined };
  const root = mkdtempSync(join(tmpdir(), 'step1x-v12-model-'));
  const tmpModel = join(root, 'model');
  const link = (src: string, dst: string) => {
    if (statSync(src).isDirectory()) {
      mkdirSync(dst, { recursive: true });
      for (const e of readdirSync(src)) link(join(src, e), join(dst, e));
    } else symlinkSync(resolve(src), dst);
  };
  link(model, tmpModel);
  for (const s of shared) {
    const src = present(join(dirname(resolve(caseDir)), s.from));
    if (!src) fail(`${caseDir}: spec.shared_files: ${s.from} not found beside the case (copy the shared cases it names)`, ExitCode.WEIGHTS);
    if (sha256(src) !== s.sha256) fail(`${src}: sha256 differs from spec.shared_files (${s.sha256})`, ExitCode.WEIGHTS);
    const dst = join(root, s.to + (src.endsWith('.gz') && !s.to.endsWith('.gz') ? '.gz' : ''));
    if (!existsSync(dst)) symlinkSync(resolve(src), dst);
  }
  return { dir: tmpModel, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

async function photoOf(ctx: GoldenContext): Promise<RgbImage> {
  const info = ctx.io.tensors.get('in.photo_u8');
  if (!info || info.shape.length !== 3 || info.shape[2] !== 3) fail(`${ctx.caseDir}: in.photo_u8 must be [H, W, 3]`, ExitCode.USAGE);
  return { height: info.shape[0], width: info.shape[1], data: await ctx.io.readBytes('in.photo_u8') };
}

const emitU8 = (emit: GoldenContext['emit'], name: string, img: RgbImage) => emit(name, img.data, [img.height, img.width, 3], 'u8');

export async function run(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec ?? {}, g = ctx.gpu;
  const { dir, cleanup } = assembleModel(ctx.caseDir, spec);
  try {
    const d = readDiffusersDir(dir);
    if (d.version !== 'v1.2') fail(`${dir}: a ${d.version} model; the v12_e2e kind runs v1.2`, ExitCode.WEIGHTS);
    const photo = await photoOf(ctx);
    // ---- images
    const [w, h] = inputProcessSize(photo.width, photo.height, spec.size_level);
    const ref = resize(photo, w, h, 'lanczos');
    emitU8(ctx.emit, 'mid.ref_resized_u8', ref);
    const px = spec.processor_pixels ?? {};
    const [rh, rw] = smartResize(ref.height, ref.width, 28, px.min_pixels, px.max_pixels, 'processor');
    const qimg = resizeTorchU8Bicubic(ref, rw, rh);
    emitU8(ctx.emit, 'mid.qwen_resized_u8', qimg);
    // the fast processor fuses rescale and normalize: (x − 255·mean) / (255·std) in f32
    const { pixelValues, gridThw } = patchify(qimg, 1, CLIP_MEAN.map((m) => fr(m * 255)), CLIP_STD.map((s) => fr(s * 255)));
    ctx.emit('mid.image_grid_thw', Int32Array.from(gridThw), [1, 3], 'i64');
    const rowLen = 1176, rowsIdx = await ctx.inputInt('in.pixel_values_row_index');
    const rows = new Float32Array(rowsIdx.length * rowLen);
    rowsIdx.forEach((r, i) => rows.set(pixelValues.subarray(r * rowLen, (r + 1) * rowLen), i * rowLen));
    ctx.emit('mid.pixel_values_rows', rows, [rowsIdx.length, rowLen]);
    ctx.emit('mid.pixel_values_sum', Float32Array.of(pixelValues.reduce((s, v) => s + v, 0)), [1]);
    // the edit from the pixel values on: run with the fast processor's (the reference), then with the slow
    // (PIL) processor's, whose outputs the case records as mid.alt_slow_processor.* (NOT the reference)
    const edit = async (pixelValues: Float32Array, emit: GoldenContext['emit']): Promise<void> => {
      // ---- Qwen2.5-VL for the prompt and the negative prompt ""
      const tok = QwenTokenizer.load(d.tokenizerDir);
      const qwen = await QwenVL.load(g, d.textEncoderDir);
      const sides: Record<string, { emb: Float32Array; text: Float32Array; mask: Int32Array; ids: Float32Array; T: number }> = {};
      try {
        const D = qwen.cfg.text.hiddenSize;
        let visionOut: Float32Array | undefined;
        for (const side of ['cond', 'uncond'] as const) {
          const p = buildV12InputIds(tok, side === 'cond' ? spec.prompt : '', (gridThw[1] * gridThw[2]) / 4);
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
        const enc = await vae.encode(x, { sample: await ctx.input('in.sample_eps') });
        x.dispose();
        emit('mid.ref_moments', await g.readF32(enc.moments), [...enc.moments.shape]);
        const refLatent = await g.readF32(enc.latent);
        for (const t of [enc.moments, enc.mean, enc.logvar, enc.latent]) t.dispose();
        emit('mid.ref_latent', refLatent, [1, C, lh, lw]);
        const refPacked = pack2x2Host(refLatent, [1, C, lh, lw]), noise = pack2x2Host(await ctx.input('in.noise'), [1, C, lh, lw]);
        const N = (lh / 2) * (lw / 2), Cp = 4 * C;
        emit('mid.ref_latent_packed', refPacked, [1, N, Cp]);
        emit('mid.noise_packed', noise, [1, N, Cp]);
        const imgIdsAll = new Float32Array(2 * N * 3);
        imgIdsAll.set(imageIds(1, lh / 2, lw / 2));
        imgIdsAll.set(referenceIds(lh / 2, lw / 2, 'v1.2'), N * 3);
        emit('mid.img_ids', imgIdsAll, [2 * N, 3]);
        // ---- denoise
        const sched = v12Schedule(spec.num_steps, N);
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
            { cfg: spec.cfg, channels: Cp, onStep: (st) => {
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
        emitU8(emit, 'out.rgb_u8', resize(smallImg, photo.width, photo.height, 'bicubic'));
      } finally {
        vae.dispose();
      }
    };
    await edit(pixelValues, ctx.emit);
    const slow = patchify(resize(ref, rw, rh, 'bicubic')).pixelValues;
    const slowRows = new Float32Array(rowsIdx.length * rowLen);
    rowsIdx.forEach((r, i) => slowRows.set(slow.subarray(r * rowLen, (r + 1) * rowLen), i * rowLen));
    ctx.emit('mid.alt_slow_processor.pixel_values_rows', slowRows, [rowsIdx.length, rowLen]);
    ctx.emit('mid.alt_slow_processor.pixel_values_sum', Float32Array.of(slow.reduce((s, v) => s + v, 0)), [1]);
    const alt: Record<string, string> = { 'out.rgb_small_u8': 'mid.alt_slow_processor.rgb_small_u8', 'out.rgb_u8': 'mid.alt_slow_processor.rgb_u8' };
    await edit(slow, (n, data, shape, kind) => void (alt[n] && ctx.emit(alt[n], data, shape, kind)));
  } finally {
    cleanup();
  }
}

function cat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * diffusers transformer/ and vae/ under our modules' names (models/diffusers-map.ts): the config read from
 * config.json, the key set checked in the file's own names, the views (split q/k/v stacked, the final
 * layer's halves swapped, attention matrices as 1×1 convs), and the tiny v1.2 VAE against v12_e2e_tiny's
 * encoder moments and decoder output at the case tolerance.
 */
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { SafetensorsFile, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { openDiffusersDit, openDiffusersVae, openDitWeights } from '../src/models/diffusers-map.js';
import { expectedDitKeys } from '../src/models/dit-config.js';
import { AutoEncoder, expectedVaeKeys } from '../src/models/vae.js';
import { goldenCase } from './util/golden-path.js';
import { goldenIo } from './util/golden-io.js';

afterAll(releaseGpu);
const model = join(goldenCase('v12_e2e_tiny'), 'model');
const io = goldenIo();

async function thrown(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('did not throw');
}

const cat = (...a: Float32Array[]) => {
  const out = new Float32Array(a.reduce((s, x) => s + x.length, 0));
  let at = 0;
  for (const x of a) (out.set(x, at), (at += x.length));
  return out;
};

describe('transformer/ (Step1XEditTransformer2DModel)', () => {
  test('config.json sizes the model; the view holds exactly the official key set plus text_token_mapping', async () => {
    const { ckpt, cfg, textTokenMapping } = await openDiffusersDit(join(model, 'transformer'));
    try {
      expect(cfg.version).toBe('v1.2');
      expect(textTokenMapping).toBe(true);
      expect(cfg.dit).toMatchObject({ hidden_size: 64, num_heads: 2, depth: 1, depth_single_blocks: 1, axes_dim: [8, 12, 12], context_in_dim: 64, in_channels: 64 });
      expect(cfg.connector).toEqual({ in_channels: 16, hidden_size: 64, heads_num: 2, depth: 2 });
      const want = expectedDitKeys(cfg);
      expect(want.has('text_token_mapping.weight')).toBe(true);
      expect(ckpt.keys().sort()).toEqual([...want.keys()].sort());
      for (const [n, s] of want) expect([n, ckpt.info(n).shape]).toEqual([n, s]);
    } finally {
      await ckpt.close();
    }
  });

  test('split to_q/to_k/to_v read as the fused qkv rows; the final modulation halves come back as (shift, scale)', async () => {
    const { ckpt } = await openDiffusersDit(join(model, 'transformer'));
    const raw = await SafetensorsFile.open(join(model, 'transformer/diffusion_pytorch_model.safetensors'));
    try {
      const r = (n: string) => raw.readF32(n);
      expect(await ckpt.readF32('double_blocks.0.img_attn.qkv.weight')).toEqual(
        cat(await r('transformer_blocks.0.attn.to_q.weight'), await r('transformer_blocks.0.attn.to_k.weight'), await r('transformer_blocks.0.attn.to_v.weight')));
      expect(await ckpt.readF32('double_blocks.0.txt_attn.qkv.bias')).toEqual(
        cat(await r('transformer_blocks.0.attn.add_q_proj.bias'), await r('transformer_blocks.0.attn.add_k_proj.bias'), await r('transformer_blocks.0.attn.add_v_proj.bias')));
      expect(await ckpt.readF32('single_blocks.0.linear1.weight')).toEqual(
        cat(...(await Promise.all(['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'].map((n) => r(`single_transformer_blocks.0.${n}.weight`))))));
      const ada = await r('norm_out.linear.weight'); // [2H, H] = (scale, shift)
      const half = ada.length / 2;
      expect(await ckpt.readF32('final_layer.adaLN_modulation.1.weight')).toEqual(cat(ada.subarray(half), ada.subarray(0, half)));
      // a row read of a swapped view gives the joined rows
      const rows = await ckpt.readRowsBytes('final_layer.adaLN_modulation.1.bias', 0, 64);
      expect(rows.length).toBe(64 * 2);
    } finally {
      await raw.close();
      await ckpt.close();
    }
  });

  test('a missing, unexpected or mis-shaped diffusers tensor is named in the file\'s names; a wrong --version is refused', async () => {
    const d = mkdtempSync(join(tmpdir(), 'step1x-dt-'));
    try {
      cpSync(join(model, 'transformer/config.json'), join(d, 'config.json'));
      const src = await SafetensorsFile.open(join(model, 'transformer/diffusion_pytorch_model.safetensors'));
      const tensors: Record<string, WriteTensor> = {};
      for (const n of src.keys()) {
        if (n === 'transformer_blocks.0.attn.to_k.weight') continue; // missing
        const info = src.info(n);
        const name = n === 'proj_out.bias' ? 'proj_out.b' : n; // unexpected + missing
        const shape = n === 'transformer_blocks.0.attn.norm_q.weight' ? [16, 2] : info.shape; // mis-shaped
        tensors[name] = { dtype: info.dtype, shape, data: await src.readBytes(n) };
      }
      await src.close();
      await writeSafetensors(join(d, 'diffusion_pytorch_model.safetensors'), tensors);
      const msg = await thrown(openDiffusersDit(d));
      expect(msg).toMatch(/missing: .*transformer_blocks\.0\.attn\.to_k\.weight/);
      expect(msg).toMatch(/proj_out\.bias/);
      expect(msg).toMatch(/transformer_blocks\.0\.attn\.norm_q\.weight is \[16,2\], expected \[32\]/);
      expect(msg).toMatch(/unexpected: proj_out\.b/);
      expect(await thrown(openDitWeights(join(model, 'transformer'), { version: 'v1.1' }))).toMatch(/the weights are v1\.2 .*text_token_mapping.*v1\.1 was asked for/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('vae/ (AutoencoderKL)', () => {
  test('the view holds the official key set; attention matrices as [C, C, 1, 1]; decoder blocks in FLUX order', async () => {
    const { ckpt, cfg } = await openDiffusersVae(join(model, 'vae'));
    try {
      expect(cfg).toMatchObject({ ch: 32, ch_mult: [1, 1, 1, 1], num_res_blocks: 1, z_channels: 16, scale_factor: 0.3611, shift_factor: 0.1159 });
      const want = expectedVaeKeys(cfg);
      expect(ckpt.keys().sort()).toEqual([...want.keys()].sort());
      expect(ckpt.info('decoder.mid.attn_1.q.weight').shape).toEqual([32, 32, 1, 1]);
      const raw = await Checkpoint.open(join(model, 'vae'));
      try {
        // diffusers up_blocks.0 runs first = FLUX up.3 (the lowest resolution)
        expect(await ckpt.readF32('decoder.up.3.block.0.conv1.weight')).toEqual(await raw.readF32('decoder.up_blocks.0.resnets.0.conv1.weight'));
        expect(await ckpt.readF32('decoder.up.1.upsample.conv.bias')).toEqual(await raw.readF32('decoder.up_blocks.2.upsamplers.0.conv.bias'));
      } finally {
        await raw.close();
      }
    } finally {
      await ckpt.close();
    }
  });

  test('encoder moments and decoder output of v12_e2e_tiny within the case tolerance (atol 1e-4, rtol 2e-4)', async () => {
    const g = await getGpu();
    const f = await io('v12_e2e_tiny');
    const ae = await AutoEncoder.load(g, join(model, 'vae'));
    try {
      const x = g.upload(await f.readF32('mid.vae_input'), [1, 3, 64, 80]);
      const m = await ae.moments(x);
      x.dispose();
      const got = await g.readF32(m);
      m.dispose();
      const want = await f.readF32('mid.ref_moments');
      const z = g.upload(await f.readF32('mid.vae_decode_input'), [1, 16, 8, 10]);
      const dec = await ae.decoder.forward(z); // the fork unscales (z / scaling + shift) before vae.decode: mid.vae_decode_input is after that
      z.dispose();
      const gotD = await g.readF32(dec);
      dec.dispose();
      const wantD = await f.readF32('mid.decoded');
      for (const [name, a, b] of [['mid.ref_moments', got, want], ['mid.decoded', gotD, wantD]] as const) {
        let worst = 0;
        for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1e-4 + 2e-4 * Math.abs(b[i])));
        if (!(a.length === b.length && worst <= 1)) throw new Error(`${name}: ${a.length} vs ${b.length} values, worst ${worst.toFixed(3)} of the tolerance`);
      }
    } finally {
      ae.dispose();
    }
  });
});

describe('the v1.2 DiT from transformer/ (GPU)', () => {
  test('one forward of v12_e2e_tiny step 0 (cond): connector, text_token_mapping, context and raw output within the case tolerance', async () => {
    const { Step1XEdit } = await import('../src/models/dit.js');
    const g = await getGpu();
    const f = await io('v12_e2e_tiny');
    const dit = await Step1XEdit.open(g, join(model, 'transformer'));
    try {
      expect(dit.version).toBe('v1.2');
      const T = f.tensors.get('mid.prompt_embeds.cond')!.shape[0];
      const t = await f.readF32('mid.step0.transformer_timestep');
      const contextAdd = await dit.textTokenMapping(await f.readF32('mid.text_embeds.cond'), await f.readI32('mid.text_mask.cond'), 1, T);
      const taps = new Map<string, Float32Array>();
      const pred = await dit.forward(
        {
          img: cat(await f.readF32('mid.noise_packed'), await f.readF32('mid.ref_latent_packed')), imgIds: await f.readF32('mid.img_ids'),
          txtIds: await f.readF32('mid.txt_ids.cond'), timesteps: t, tVec: t, llmEmbedding: await f.readF32('mid.prompt_embeds.cond'),
          mask: new Float32Array(T).fill(1), contextAdd, B: 1, L: 40, T,
        },
        async (name, v) => void taps.set(name, v instanceof Float32Array ? v : await g.readF32(v)),
      );
      const out = await g.readF32(pred);
      pred.dispose();
      const checks: [string, Float32Array | undefined, string][] = [
        ['connector', taps.get('mid.connector.txt'), 'mid.step0.connector_out.cond'],
        ['pooled', taps.get('mid.connector.y'), 'mid.step0.pooled.cond'],
        ['text_token_mapping', contextAdd, 'mid.step0.text_token_mapping.cond'],
        ['context', taps.get('mid.context_in'), 'mid.step0.context_in.cond'],
        ['raw output', out, 'mid.step0.raw_out.cond'],
      ];
      const report: string[] = [];
      const mask = await f.readI32('mid.text_mask.cond');
      for (const [what, a, name] of checks) {
        const b = await f.readF32(name);
        // the fork records text_token_mapping(text_embeds) before the text_mask multiplies it
        if (what === 'text_token_mapping') for (let r = 0; r < T; r++) if (!mask[r]) b.fill(0, r * 64, (r + 1) * 64);
        let worst = 0;
        for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a![i] - b[i]) / (1e-4 + 2e-4 * Math.abs(b[i])));
        if (!(a && a.length === b.length && worst <= 1)) report.push(`${what} (${name}): ${a?.length} vs ${b.length} values, worst ${worst.toFixed(3)} of the tolerance`);
      }
      expect(report).toEqual([]);
    } finally {
      await dit.close();
    }
  });
});

describe('the v1.2 sampler (GPU)', () => {
  test('schedule and every step of v12_e2e_tiny from its prompt embeddings, text ids and latents (case tolerance)', async () => {
    const { Step1XEdit } = await import('../src/models/dit.js');
    const { v12Schedule, v12Denoise } = await import('../src/pipeline/v12-sampling.js');
    const g = await getGpu();
    const f = await io('v12_e2e_tiny');
    const dit = await Step1XEdit.open(g, join(model, 'transformer'));
    const report: string[] = [];
    const check = async (name: string, got: Float32Array, atol = 1e-4, rtol = 2e-4) => {
      const b = await f.readF32(name);
      let worst = got.length === b.length ? 0 : Infinity;
      for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(got[i] - b[i]) / (atol + rtol * Math.abs(b[i])));
      if (!(worst <= 1)) report.push(`${name}: worst ${worst.toFixed(3)} of the tolerance`);
    };
    try {
      const sched = v12Schedule(4, 20);
      await check('mid.sigmas', sched.sigmas, 1e-6, 0);
      await check('mid.timesteps', sched.timesteps, 1e-4, 0);
      const ref = await f.readF32('mid.ref_latent_packed'), imgIds = await f.readF32('mid.img_ids');
      const sides: Record<string, { emb: Float32Array; ids: Float32Array; add: Float32Array; T: number }> = {};
      for (const s of ['cond', 'uncond']) {
        const T = f.tensors.get(`mid.prompt_embeds.${s}`)!.shape[0];
        sides[s] = { emb: await f.readF32(`mid.prompt_embeds.${s}`), ids: await f.readF32(`mid.txt_ids.${s}`), T,
          add: await dit.textTokenMapping(await f.readF32(`mid.text_embeds.${s}`), await f.readI32(`mid.text_mask.${s}`), 1, T) };
      }
      const predict = async (side: 'cond' | 'uncond', x: Float32Array, t: number) => {
        const s = sides[side];
        const out = await dit.forward({ img: cat(x, ref), imgIds, txtIds: s.ids, timesteps: [t], tVec: [t], llmEmbedding: s.emb, mask: new Float32Array(s.T).fill(1), contextAdd: s.add, B: 1, L: 40, T: s.T });
        const host = await g.readF32(out);
        out.dispose();
        return host.slice(0, 20 * 64); // the noise tokens
      };
      await v12Denoise(predict, await f.readF32('mid.noise_packed'), sched, {
        cfg: 6, channels: 64,
        onStep: async (s) => {
          await check(`mid.step${s.step}.pred_cond`, s.predCond);
          await check(`mid.step${s.step}.pred_uncond`, s.predUncond);
          await check(`mid.step${s.step}.pred_guided`, s.predGuided);
          await check(`mid.step${s.step}.latent_after`, s.latentAfter);
        },
      });
    } finally {
      await dit.close();
    }
    expect(report).toEqual([]);
  });
});

/**
 * Weight-format error on one real-size DiT double-stream block (H 3072, 24 heads, MLP 12288) with random
 * bf16 weights in the checkpoint layout (uniform ±1/sqrt(K), biases ±0.02, QK-norm scales 1 ± 0.1),
 * loaded through the same path as the model (nn/weight.ts) as bf16, fp8, q8 and q4:
 * rel L2 of the block's image / text outputs and of their residual updates (out − in) against bf16.
 *
 *   node dist/kernels-test/quant-error.js [--tokens T,L] [--json FILE]    (default T 64, L 256, B 1)
 *   node dist/kernels-test/quant-error.js --tiny    the tiny goldens instead (run from the repo root):
 *        rel L2 of dit_tiny's out.pred and sampler_tiny's out.latent (4 CFG steps) vs the bf16 reference,
 *        each case run with `spec.weights` = bf16 / fp8 / q8 / q4 (copies of the cases in a temp dir)
 *
 * Writes a 0.7 GB temporary checkpoint in the OS temp dir (removed at the end).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gpu } from '../src/runtime/gpu.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { DoubleStreamBlock, RopePe } from '../src/models/dit-blocks.js';
import { fluxPe } from '../src/ops/rope-tables.js';
import { withWeightPolicy, type WeightsOption } from '../src/nn/weight.js';
import { relL2, QBLOCK } from '../src/io/quant.js';
import type { DitParams } from '../src/models/dit-config.js';

const argv = process.argv.slice(2);
const optStr = (n: string) => (argv.indexOf(n) >= 0 ? argv[argv.indexOf(n) + 1] : undefined);
const [T, L] = (optStr('--tokens') ?? '64,256').split(',').map(Number);
const H = 3072, HEADS = 24, M = 12288, HD = H / HEADS, B = 1;

let seed = 0x1234567;
function rand(n: number, scale: number, offset = 0): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = offset + (s / 4294967296 * 2 - 1) * scale;
  }
  seed = (seed + 0x6d2b79f5) >>> 0;
  return out;
}
const bf16 = (f: Float32Array): Uint16Array => Uint16Array.from(new Uint32Array(f.buffer), (u) => u >>> 16);

async function tiny(): Promise<void> {
  const { runGolden } = await import('../src/golden/runner.js');
  await import('../src/golden/kinds/index.js');
  const { SafetensorsFile } = await import('../src/io/safetensors.js');
  const { copyFileSync, readFileSync, mkdirSync } = await import('node:fs');
  const tmp = mkdtempSync(join(tmpdir(), 'step1x-qerr-tiny-'));
  const out: Record<string, Record<string, number>> = {};
  try {
    for (const [name, tensor] of [['dit_tiny', 'out.pred'], ['sampler_tiny', 'out.latent']]) {
      const src = join('test/golden', name);
      const io = await SafetensorsFile.open(join(src, 'io.safetensors'));
      const ref = await io.readF32(tensor);
      await io.close();
      out[`${name} ${tensor}`] = {};
      for (const w of ['bf16', 'fp8', 'q8', 'q4']) {
        const dst = join(tmp, `${name}-${w}`);
        mkdirSync(dst);
        for (const f of ['io.safetensors', 'dit.safetensors']) copyFileSync(join(src, f), join(dst, f));
        const cj = JSON.parse(readFileSync(join(src, 'case.json'), 'utf8'));
        cj.spec.weights = w;
        writeFileSync(join(dst, 'case.json'), JSON.stringify(cj));
        const r = await runGolden(dst, { log: () => undefined });
        out[`${name} ${tensor}`][w] = relL2(r.emitted.get(tensor)!.data, ref);
      }
    }
    process.stdout.write(JSON.stringify(out, null, 1) + '\n');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  process.exit(0);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-qerr-'));
  try {
    const t: Record<string, WriteTensor> = {};
    const lin = (p: string, N: number, K: number) => {
      t[`${p}.weight`] = { dtype: 'BF16', shape: [N, K], data: bf16(rand(N * K, 1 / Math.sqrt(K))) };
      t[`${p}.bias`] = { dtype: 'BF16', shape: [N], data: bf16(rand(N, 0.02)) };
    };
    for (const s of ['img', 'txt']) {
      const p = `double_blocks.0.${s}`;
      lin(`${p}_mod.lin`, 6 * H, H);
      lin(`${p}_attn.qkv`, 3 * H, H);
      lin(`${p}_attn.proj`, H, H);
      lin(`${p}_mlp.0`, M, H);
      lin(`${p}_mlp.2`, H, M);
      for (const n of ['query_norm', 'key_norm']) t[`${p}_attn.norm.${n}.scale`] = { dtype: 'BF16', shape: [HD], data: bf16(rand(HD, 0.1, 1)) };
    }
    const file = join(dir, 'block.safetensors');
    await writeSafetensors(file, t);
    const cfg = { hidden_size: H, num_heads: HEADS, mlp_ratio: 4 } as unknown as DitParams;
    const g = await Gpu.create();
    const img = rand(B * L * H, 1), txt = rand(B * T * H, 1), vec = rand(B * H, 1);
    const ids = new Float32Array(B * (T + L) * 3);
    for (let i = 0; i < L; i++) ids.set([0, Math.floor(i / 16), i % 16], (T + i) * 3);
    const pe = RopePe.build(g, fluxPe(ids, 1, T + L, [16, 56, 56], 10000), 1, T + L, HD);
    const outs: Record<string, { img: Float32Array; txt: Float32Array; ms: number; bytes: number }> = {};
    for (const w of ['bf16', 'fp8', 'q8', 'q4'] as WeightsOption[]) {
      const ck = withWeightPolicy(await Checkpoint.open(file), { weights: w });
      await g.sync();
      const base = g.pool.liveBytes;
      const blk = await new DoubleStreamBlock(cfg).load(g, ck, 'double_blocks.0');
      await g.sync();
      const bytes = g.pool.liveBytes - base;
      const xi = g.upload(img, [B, L, H]), xt = g.upload(txt, [B, T, H]), sv = g.upload(vec, [B, H]);
      const t0 = performance.now();
      const [oi, ot] = blk.forward(xi, xt, sv, pe);
      const res = { img: await g.readF32(oi), txt: await g.readF32(ot), ms: performance.now() - t0, bytes };
      outs[w] = res;
      for (const x of [xi, xt, sv, oi, ot]) x.dispose();
      blk.dispose();
      await ck.close();
      process.stderr.write(`  ${w}: block weights ${(bytes / 2 ** 20).toFixed(1)} MiB, forward ${res.ms.toFixed(0)} ms\n`);
    }
    pe.dispose();
    g.destroy();
    const delta = (o: Float32Array, x: Float32Array) => o.map((v, i) => v - x[i]);
    const rows = (['fp8', 'q8', 'q4'] as const).map((w) => ({
      weights: w,
      block_weight_mib: +(outs[w].bytes / 2 ** 20).toFixed(1),
      rel_l2_img: relL2(outs[w].img, outs.bf16.img),
      rel_l2_txt: relL2(outs[w].txt, outs.bf16.txt),
      rel_l2_img_update: relL2(delta(outs[w].img, img), delta(outs.bf16.img, img)),
      rel_l2_txt_update: relL2(delta(outs[w].txt, txt), delta(outs.bf16.txt, txt)),
    }));
    const report = { H, M, heads: HEADS, T, L, B, qblock: QBLOCK, bf16_block_weight_mib: +(outs.bf16.bytes / 2 ** 20).toFixed(1), rows };
    process.stdout.write(JSON.stringify(report, null, 1) + '\n');
    const j = optStr('--json');
    if (j) writeFileSync(j, JSON.stringify(report, null, 1));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.exit(0);
}

void (argv.includes('--tiny') ? tiny() : main());

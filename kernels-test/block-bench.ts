/**
 * One DiT double-stream block and one single-stream block at the real Step1X-Edit sizes, with random bf16
 * weights in the checkpoint's shapes and dtypes (every tensor of a block is BF16 there, biases and QK-norm
 * scales included): time per block and peak GPU bytes (`g.pool.peakLiveBytes`).
 *
 *   node dist/kernels-test/block-bench.js            hidden 3072, 24 heads, mlp 12288, B 2,
 *                                                    L = 4096 + 4096 image + 640 text tokens (a real GPU)
 *   node dist/kernels-test/block-bench.js --small    hidden 128, 2 heads, mlp 512, B 2, L = 24 + 24 + 16 (lavapipe)
 *   options: --iters N (timed repeats, default 5 full / 3 small), --batch N, --json FILE (results as JSON),
 *            --tokens T,LIMG (text and image token counts, e.g. 640,2048 for 512²; LIMG even)
 *
 * Timing: one warm-up forward (pipeline compile), then N forwards, each followed by `await g.sync()`;
 * min and mean wall ms. Peak bytes are measured over one forward after `g.pool.resetPeak()`, reported
 * as the total (weights + inputs + transients) and the transient part above what was live before it.
 */
import { writeFileSync } from 'node:fs';
import { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';
import { Module, TensorParam, WeightParam } from '../src/nn/module.js';
import { Weight } from '../src/nn/weight.js';
import { DoubleStreamBlock, SingleStreamBlock, RopePe } from '../src/models/dit-blocks.js';
import { REAL_DIT, type DitParams } from '../src/models/dit-config.js';
import { fluxPe } from '../src/ops/rope-tables.js';
import { canStoreF16, withActivations, type ActDtype } from '../src/ops/act-dtype.js';

const argv = process.argv.slice(2);
const SMALL = argv.includes('--small');
const opt = (name: string, def: number): number => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? Number(argv[i + 1]) : def;
};
const optStr = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : undefined;
};

const H = SMALL ? 128 : 3072;
const HEADS = SMALL ? 2 : 24;
const M = SMALL ? 512 : 12288;
const HD = H / HEADS;
const AXES = SMALL ? [8, 28, 28] : [16, 56, 56]; // sum = head dim
const TOKENS = optStr('--tokens')?.split(',').map(Number); // --tokens T,LIMG overrides the token counts
const T = TOKENS?.[0] ?? (SMALL ? 16 : 640); // text tokens
const LIMG = TOKENS?.[1] ?? (SMALL ? 48 : 8192); // image tokens: noise half + reference half (2 × 4096 at 1024²)
const B = opt('--batch', 2);
const ITERS = opt('--iters', SMALL ? 3 : 5);
const JSON_OUT = optStr('--json');

// ---- random data ----------------------------------------------------------------------------------

let seed = 0x9e3779b9;
/** Uniform in [-scale, scale) rounded (truncated) to bf16 bits; xorshift32, cheap enough for 400M values. */
function randBf16(n: number, scale: number): Uint16Array {
  const out = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    f[0] = (s / 4294967296 * 2 - 1) * scale;
    out[i] = u[0] >>> 16;
  }
  seed = (seed + 0x6d2b79f5) >>> 0;
  return out;
}
function randF32(n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = (s / 4294967296 * 2 - 1) * scale;
  }
  seed = (seed + 0x6d2b79f5) >>> 0;
  return out;
}

/**
 * The declared block's parameters filled as in the checkpoint: bf16 Linear weights (init scale ~ 1/sqrt(K)),
 * bf16 biases ~ U(±0.02), RMSNorm scales near 1: 1 + U(-0.1, 0.1), truncated to bf16.
 */
function randomize<M extends Module>(g: Gpu, m: M): M {
  for (const [name, p] of m.params()) {
    if (p instanceof WeightParam) {
      const [N, K] = p.shape;
      p.set(Weight.plain(g.upload(randBf16(N * K, 1 / Math.sqrt(K)), [N, K], 'bf16', name)));
    } else if (p instanceof TensorParam && name.endsWith('.scale')) {
      const f = randF32(p.shape[0], 0.1).map((v) => 1 + v);
      const u = new Uint32Array(f.buffer);
      p.set(g.upload(Uint16Array.from(u, (b) => b >>> 16), [...p.shape], 'bf16', name));
    } else if (p instanceof TensorParam) p.set(g.upload(randBf16(p.shape[0], 0.02), [...p.shape], 'bf16', name));
  }
  return m;
}
const blockCfg = (): DitParams => ({ ...REAL_DIT, axes_dim: [...REAL_DIT.axes_dim], hidden_size: H, num_heads: HEADS, mlp_ratio: M / H, qkv_bias: true });

// ---- timing -------------------------------------------------------------------------------------

interface Timing {
  minMs: number;
  meanMs: number;
  peakBytes: number;
  transientPeakBytes: number;
}

async function timeBlock(g: Gpu, run: () => Tensor[]): Promise<Timing> {
  // warm-up: compiles every pipeline
  run().forEach((t) => t.dispose());
  await g.sync();
  // peak over one forward
  const before = g.pool.liveBytes;
  g.pool.resetPeak();
  run().forEach((t) => t.dispose());
  await g.sync();
  const peakBytes = g.pool.peakLiveBytes;
  const times: number[] = [];
  for (let i = 0; i < ITERS; i++) {
    const t0 = performance.now();
    run().forEach((t) => t.dispose());
    await g.sync();
    times.push(performance.now() - t0);
  }
  return {
    minMs: Math.min(...times),
    meanMs: times.reduce((a, b) => a + b, 0) / times.length,
    peakBytes,
    transientPeakBytes: peakBytes - before,
  };
}

const gib = (b: number) => (b / 2 ** 30).toFixed(3);

async function main(): Promise<void> {
  const g = await Gpu.create();
  const d = g.describe();
  const L = T + LIMG;
  console.log(`device: ${d.vendor} ${d.architecture} ${d.description}`);
  console.log(`blocks: hidden ${H}, heads ${HEADS} × ${HD}, mlp ${M}, batch ${B}, tokens ${T} text + ${LIMG} image = ${L}, iters ${ITERS}`);
  const results: Record<string, unknown>[] = [];
  try {
    // shared inputs: activations f32 (as in the model), rope table for the joint sequence (batch-1, broadcast)
    const ids = new Float32Array(L * 3);
    const side = Math.max(1, Math.round(Math.sqrt(LIMG / 2)));
    for (let i = 0; i < LIMG; i++) {
      const j = i % (LIMG / 2);
      ids[(T + i) * 3 + 0] = i < LIMG / 2 ? 0 : 1;
      ids[(T + i) * 3 + 1] = Math.floor(j / side);
      ids[(T + i) * 3 + 2] = j % side;
    }
    const pe = RopePe.build(g, fluxPe(ids, 1, L, AXES, 10000), 1, L, HD);
    const img = g.upload(randF32(B * LIMG * H, 1), [B, LIMG, H], 'f32', 'img');
    const txt = g.upload(randF32(B * T * H, 1), [B, T, H], 'f32', 'txt');
    const joint = g.upload(randF32(B * L * H, 1), [B, L, H], 'f32', 'joint');
    const siluVec = g.upload(randF32(B * H, 1), [B, H], 'f32', 'siluVec');
    const inputBytes = g.pool.liveBytes;

    // Activation storage as a DiT step of the run stores it (ops/act-dtype.ts: f16 where the device can,
    // rows 'double' / 'single', compared with PyTorch), and f32 storage beside it ('… f32-act') for the ratio.
    const acts: [string, ActDtype][] = canStoreF16(g) ? [['', 'f16'], [' f32-act', 'f32']] : [['', 'f32']];
    console.log(`activation storage: ${acts.map(([n, a]) => `${n ? n.trim() : 'default'} ${a}`).join(', ')}`);

    // attention FLOPs over the joint sequence: QKᵀ and PV, 2·2·L²·hd per head
    const attnFlops = 4 * B * HEADS * L * L * HD;

    {
      const live0 = g.pool.liveBytes;
      const blk = randomize(g, new DoubleStreamBlock(blockCfg()));
      const weightBytes = g.pool.liveBytes - live0;
      const linFlops = 2 * B * L * (H * 3 * H + H * H + 2 * H * M) + 2 * 2 * B * 6 * H * H;
      const flops = linFlops + attnFlops;
      for (const [name, act] of acts) {
        const t = await timeBlock(g, () => withActivations(g, act, () => blk.forward(img, txt, siluVec, pe)));
        results.push({ block: `double${name}`, activations: act, ...t, weightBytes, inputBytes, flops, tflops: flops / t.minMs / 1e9 });
      }
      blk.dispose();
    }
    {
      const live0 = g.pool.liveBytes;
      const blk = randomize(g, new SingleStreamBlock(blockCfg()));
      const weightBytes = g.pool.liveBytes - live0;
      const linFlops = 2 * B * L * (H * (3 * H + M) + (H + M) * H) + 2 * B * 3 * H * H;
      const flops = linFlops + attnFlops;
      for (const [name, act] of acts) {
        const t = await timeBlock(g, () => withActivations(g, act, () => [blk.forward(joint, siluVec, pe)]));
        results.push({ block: `single${name}`, activations: act, ...t, weightBytes, inputBytes, flops, tflops: flops / t.minMs / 1e9 });
      }
      blk.dispose();
    }
    for (const t of [img, txt, joint, siluVec]) t.dispose();
    pe.dispose();

    console.log(`| block  | min ms     | mean ms    | TFLOP/s | weights GiB | peak GiB | transient GiB |`);
    console.log(`|--------|------------|------------|---------|-------------|----------|---------------|`);
    for (const r of results) {
      const x = r as { block: string; minMs: number; meanMs: number; tflops: number; weightBytes: number; peakBytes: number; transientPeakBytes: number };
      console.log(
        `| ${x.block.padEnd(6)} | ${x.minMs.toFixed(2).padStart(10)} | ${x.meanMs.toFixed(2).padStart(10)} | ${x.tflops.toFixed(2).padStart(7)} | ` +
          `${gib(x.weightBytes).padStart(11)} | ${gib(x.peakBytes).padStart(8)} | ${gib(x.transientPeakBytes).padStart(13)} |`,
      );
    }
    const summary = { device: `${d.vendor} ${d.architecture} ${d.description}`, H, heads: HEADS, mlp: M, B, T, Limg: LIMG, iters: ITERS, results };
    console.log('RESULT ' + JSON.stringify(summary));
    if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(summary, null, 2) + '\n');
  } finally {
    g.destroy();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exit(1);
});

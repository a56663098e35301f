/**
 * `npm run bench` (after `npm run build`): kernel timings as a table of shape, variant, ms, GFLOP/s, GB/s.
 *
 *   node dist/kernels-test/bench.js            default set, sized for lavapipe (a few minutes on 2 cores)
 *   node dist/kernels-test/bench.js --full     the real Step1X-Edit sizes at 1024² (a real GPU)
 *   node dist/kernels-test/bench.js --tiles    also sweep tiled-kernel geometries at 1024³ (tuning)
 *   --load-only / --no-load                    only / without the loading rows (load-bench.ts: 1 GB bf16
 *                                              checkpoint, raw read vs the load path, bf16 and q8)
 *
 * GEMM rows use DiT-like shapes (K = 3072, N = 3072 / 12288, bf16 weights as in the checkpoint) and
 * M = N = K = 1024 f32 tiled vs naive with their ratio. Attention and conv2d rows are added when
 * src/ops/attention.ts / src/ops/conv.ts exist (imported dynamically; skipped with a note otherwise).
 * Timing: one warm-up run (pipeline compile), then repeats between `await g.sync()` calls; the repeat
 * count adapts so each row takes about a second.
 *
 * Variants (every run): each GEMM kernel the device can run (register-tiled, workgroup-tiled,
 * subgroup-matrix when the adapter has it) and each attention kernel at the same shapes, GFLOP/s and
 * the ratio to the register path, the VAE's 3x3 convs as implicit GEMM on subgroup matrices vs the direct
 * f32 kernel, plus the autotune's choice for the first shape (cached per adapter;
 * printed, not applied to the other rows). On lavapipe the ratios say nothing about GPUs.
 */
import { Gpu } from '../src/runtime/gpu.js';
import type { Tensor, DType } from '../src/runtime/tensor.js';
import { benchLoading } from './load-bench.js';
import { f32ArrayToBf16, f32ArrayToF16 } from '../src/runtime/half.js';
import { canStoreF16, withActivations } from '../src/ops/act-dtype.js';
import { rmsNormRope } from '../src/ops/qk-norm-rope.js';
import { rmsNorm } from '../src/ops/norm.js';
import { applyRopeFlux } from '../src/ops/rope.js';
import { linear, DEFAULT_TILE, type LinearOptions, type TileConfig } from '../src/ops/linear.js';
import { randn } from './harness.js';
import { hasMatrixUnits } from '../src/runtime/caps.js';
import { tune } from '../src/ops/tune.js';
import { benchGenerate } from './bench-generate.js';
import { setTunedTiles, sgmatFits, sgmatTileOf, gemmConfig, defaultSgmatTiles, DEFAULT_SGMAT_TILE, type SgmatTile } from '../src/ops/plan-gemm.js';

const args = new Set(process.argv.slice(2));
const FULL = args.has('--full');
const TILES = args.has('--tiles');

interface Row {
  shape: string;
  variant: string;
  ms: number;
  cpu: number;
  gflops: number;
  gbs: number;
  note?: string;
}
const rows: Row[] = [];

function fmtRow(r: Row): string {
  return `| ${r.shape.padEnd(38)} | ${r.variant.padEnd(20)} | ${r.ms.toFixed(2).padStart(10)} | ${r.gflops.toFixed(2).padStart(8)} | ${r.gbs.toFixed(2).padStart(7)} | ${r.cpu.toFixed(0).padStart(7)} |${r.note ? ' ' + r.note : ''}`;
}

/**
 * ms of `run` (records GPU work, returns a tensor to free): one warm-up (pipeline compile), then repeats,
 * each between `await g.sync()` calls; the minimum is reported (robust when other processes share the
 * CPU), with the process CPU time of that repeat (lavapipe's worker threads run inside this process).
 */
async function time(g: Gpu, run: () => Tensor, targetMs = FULL ? 3000 : 1000): Promise<{ ms: number; cpu: number }> {
  run().dispose();
  await g.sync();
  let best = { ms: Infinity, cpu: Infinity };
  let spent = 0;
  for (let i = 0; i < 20 && (i < 2 || spent < targetMs); i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    run().dispose();
    await g.sync();
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    spent += ms;
    if (ms < best.ms) best = { ms, cpu: (c.user + c.system) / 1000 };
  }
  return best;
}

function record(shape: string, variant: string, t: { ms: number; cpu: number }, flops: number, bytes: number, note?: string): Row {
  const ms = t.ms;
  const r = { shape, variant, ms, cpu: t.cpu, gflops: flops / ms / 1e6, gbs: bytes / ms / 1e6, note };
  rows.push(r);
  console.log(fmtRow(r));
  return r;
}

function upload(g: Gpu, n: number, shape: number[], dtype: DType, seed: number): Tensor {
  const x = randn(n, seed, 0.5);
  if (dtype === 'f16') return g.upload(f32ArrayToF16(x), shape, 'f16');
  return dtype === 'bf16' ? g.upload(f32ArrayToBf16(x), shape, 'bf16') : g.upload(x, shape, 'f32');
}

async function benchLinear(g: Gpu, M: number, K: number, N: number, wdt: DType, opts: LinearOptions = {}, label?: string): Promise<Row | null> {
  const shape = `linear M=${M} K=${K} N=${N} w=${wdt}`;
  let x: Tensor | null = null, w: Tensor | null = null;
  try {
    x = upload(g, M * K, [M, K], 'f32', 1);
    w = upload(g, N * K, [N, K], wdt, 2);
    const xt = x, wt = w;
    const t = await time(g, () => linear(xt, wt, undefined, opts));
    const bytes = M * K * 4 + N * K * (wdt === 'bf16' ? 2 : 4) + M * N * 4;
    const v = label ?? opts.variant ?? (M <= 4 ? 'auto (gemv)' : 'auto (tiled)');
    return record(shape, v, t, 2 * M * N * K, bytes);
  } catch (e) {
    // e.g. a 1.5 GB output over the device's maxBufferSize: report and go on with the other rows
    console.log(`(${shape} failed: ${(e as Error).message.split('\n')[0]})`);
    return null;
  } finally {
    x?.dispose();
    w?.dispose();
  }
}

/** The subgroup-matrix GEMM with f16 activation storage: x f16, out f16 (X16 / O16), bf16 weights. */
/**
 * f16 x and out on the default tile: A read straight from storage where the shape allows (gemm-sgmat ADIRECT,
 * the plan's choice), or (`staged`) the same tile with A staged through workgroup memory (`adirect: false`).
 */
async function benchLinearF16(g: Gpu, M: number, K: number, N: number, staged = false): Promise<Row | null> {
  const shape = `linear M=${M} K=${K} N=${N} w=bf16`;
  const name = `subgroup-matrix f16 x/out${staged ? ' A staged' : ''}`;
  let x: Tensor | null = null, w: Tensor | null = null;
  const cfg = gemmConfig(g.caps);
  const tile = cfg ? defaultSgmatTiles(g.caps, cfg)[0] : undefined;
  if (staged && tile) setTunedTiles(g, { lookup: (kind) => (kind === 'subgroup-matrix' ? { ...tile, adirect: false } : undefined) });
  try {
    x = upload(g, M * K, [M, K], 'f16', 1);
    w = upload(g, N * K, [N, K], 'bf16', 2);
    const xt = x, wt = w;
    const t = await time(g, () => withActivations(g, 'f16', () => linear(xt, wt, undefined, { variant: 'subgroup-matrix' })));
    return record(shape, name, t, 2 * M * N * K, M * K * 2 + N * K * 2 + M * N * 2);
  } catch (e) {
    console.log(`(${shape} ${name} failed: ${(e as Error).message.split('\n')[0]})`);
    return null;
  } finally {
    if (staged) setTunedTiles(g, undefined);
    x?.dispose();
    w?.dispose();
  }
}

/** QK-norm + RoPE of one q [B, L, heads, Dh]: the fused pass (qk-norm-rope.wgsl) against rmsNorm then rope. */
async function benchQkNormRope(g: Gpu, B: number, L: number, H: number, Dh: number): Promise<void> {
  const shape = `qk-norm-rope B=${B} L=${L} H=${H} Dh=${Dh}`;
  const n = B * L * H * Dh;
  const x = upload(g, n, [B, L, H, Dh], 'f32', 1), w = upload(g, Dh, [Dh], 'bf16', 2);
  const pe = upload(g, L * Dh * 2, [1, L, Dh / 2, 2, 2], 'f32', 3);
  try {
    const bytes = 2 * n * 4 + L * Dh * 2 * 4;
    const base = record(shape, 'rmsNorm + rope', await time(g, () => g.scope(() => applyRopeFlux(rmsNorm(x, w, 1e-6), pe))), 0, bytes + 2 * n * 4);
    const r = record(shape, 'fused', await time(g, () => rmsNormRope(x, w, pe, 1e-6)), 0, bytes);
    console.log(`  fused / rmsNorm + rope: ${(base.ms / r.ms).toFixed(2)}x`);
    if (canStoreF16(g)) {
      const x16 = upload(g, n, [B, L, H, Dh], 'f16', 1);
      try {
        const r16 = record(shape, 'fused f16 x/out', await time(g, () => withActivations(g, 'f16', () => rmsNormRope(x16, w, pe, 1e-6))), 0, 2 * n * 2 + L * Dh * 2 * 4);
        console.log(`  fused f16 / rmsNorm + rope: ${(base.ms / r16.ms).toFixed(2)}x`);
      } finally {
        x16.dispose();
      }
    }
  } finally {
    for (const t of [x, w, pe]) t.dispose();
  }
}

async function optional<T>(path: string, name: string): Promise<T | null> {
  try {
    const mod = (await import(path)) as Record<string, unknown>;
    if (typeof mod[name] !== 'function') throw new Error(`${name} is not exported`);
    return mod[name] as T;
  } catch (e) {
    console.log(`(skipping ${name}: ${(e as Error).message.split('\n')[0]})`);
    return null;
  }
}

type AttentionFn = (q: Tensor, k: Tensor, v: Tensor) => Tensor;
type Conv2dFn = (x: Tensor, w: Tensor, b?: Tensor, opts?: { stride?: 1 | 2; pad?: [number, number, number, number]; variant?: 'auto' | 'direct' | 'subgroup-matrix' }) => Tensor;

/** The VAE decoder's 3x3 convs (C -> O at S²): full sizes on a GPU, small ones on lavapipe (emulated matrix units). */
const VAE_CONVS: [number, number, number][] = FULL ? [[512, 512, 128], [512, 512, 256], [256, 256, 512], [128, 128, 1024]] : [[64, 64, 32], [33, 17, 23]];

async function benchAttention(g: Gpu, L: number, H: number, Dh: number): Promise<void> {
  const attention = await optional<AttentionFn>('../src/ops/attention.js', 'attention');
  if (!attention) return;
  const shape = [1, L, H, Dh];
  const n = L * H * Dh;
  const [q, k, v] = [1, 2, 3].map((s) => upload(g, n, shape, 'f32', s));
  try {
    const ms = await time(g, () => attention(q, k, v));
    record(`attention L=${L} H=${H} Dh=${Dh}`, 'default', ms, 4 * H * L * L * Dh, 4 * n * 4);
  } catch (e) {
    console.log(`(attention L=${L} failed: ${(e as Error).message.split('\n')[0]})`);
  }
  for (const t of [q, k, v]) t.dispose();
}

async function benchConv(g: Gpu, C: number, O: number, S: number, variant: 'auto' | 'direct' | 'subgroup-matrix' = 'auto', name = 'default'): Promise<Row | null> {
  const conv2d = await optional<Conv2dFn>('../src/ops/conv.js', 'conv2d');
  if (!conv2d) return null;
  const x = upload(g, C * S * S, [1, C, S, S], 'f32', 4);
  const w = upload(g, O * C * 9, [O, C, 3, 3], 'f32', 5);
  try {
    const ms = await time(g, () => conv2d(x, w, undefined, { pad: [1, 1, 1, 1], variant }));
    return record(`conv2d 3x3 ${C}->${O} ${S}x${S}`, name, ms, 2 * O * C * 9 * S * S, (C + O) * S * S * 4 + O * C * 36);
  } catch (e) {
    console.log(`(conv2d ${C}->${O} ${S}² failed: ${(e as Error).message.split('\n')[0]})`);
    return null;
  } finally {
    x.dispose();
    w.dispose();
  }
}

/** Every GEMM and attention variant at the same shapes, with the ratio to the register path. */
async function benchVariants(g: Gpu): Promise<void> {
  const sg = hasMatrixUnits(g.caps) && g.hasFeature('chromium-experimental-subgroup-matrix');
  const gemmVariants: [string, LinearOptions][] = [
    ['register', { variant: 'tiled' }],
    ['workgroup', { variant: 'workgroup' }],
    ...(sg ? [['subgroup-matrix', { variant: 'subgroup-matrix' }] as [string, LinearOptions]] : []),
  ];
  if (!sg) console.log('(subgroup-matrix variants: not available on this adapter; run in scripts/sgmat-env.sh or on a GPU with matrix units)');
  const shapes: [number, number, number][] = FULL
    ? [[2 * (4096 + 4096 + 640), 3072, 3072], [2 * (4096 + 4096 + 640), 3072, 9216], [2 * (4096 + 4096 + 640), 3072, 12288], [2 * (4096 + 4096 + 640), 3072, 21504]]
    : [[128, 768, 512], [255, 257, 129]]; // lavapipe emulates matrix units slowly: small shapes (257: scalar staging)
  // Subgroup-matrix tiles beyond the plan's default: the wide 128x128 and 256x128 tiles and the f16→f16
  // config (Metal's), each where it fits this device; a K % 8 != 0 shape shows the scalar staging path.
  const sgTiles: [string, SgmatTile][] = [];
  const cfg = sg ? gemmConfig(g.caps) : null;
  if (cfg) {
    for (const [name, t] of [['sgmat 128x128', sgmatTileOf(cfg, 128, 128, 2, 4, 16)], ['sgmat 256x128', sgmatTileOf(cfg, 256, 128, 4, 2, 16)]] as const)
      if (t && sgmatFits(g.caps, cfg, t)) sgTiles.push([name, t]);
    const f16 = gemmConfig(g.caps, 'f16');
    if (f16) sgTiles.push(['sgmat f16→f16', { ...(defaultSgmatTiles(g.caps, f16)[0] ?? DEFAULT_SGMAT_TILE), res: 'f16' }]);
  }
  for (const [M, K, N] of shapes) {
    let base: Row | null = null;
    for (const [name, opts] of gemmVariants) {
      const r = await benchLinear(g, M, K, N, 'bf16', opts, name);
      if (name === 'register') base = r;
      else if (r && base) console.log(`  ${name} / register at M=${M} K=${K} N=${N}: ${(base.ms / r.ms).toFixed(2)}x`);
    }
    // f16 activation storage (ops/act-dtype.ts, what a DiT step of the run does): x read and out written in f16
    if (canStoreF16(g)) {
      const r = await benchLinearF16(g, M, K, N);
      if (r && base) console.log(`  subgroup-matrix f16 x/out / register at M=${M} K=${K} N=${N}: ${(base.ms / r.ms).toFixed(2)}x`);
      // A from storage (ADIRECT; K % 8 == 0) against the same tile with A staged
      const s = await benchLinearF16(g, M, K, N, true);
      if (r && s) console.log(`  f16 x: A from storage / A staged at M=${M} K=${K} N=${N}${K % 8 ? ' (K % 8 != 0: both staged)' : ''}: ${(s.ms / r.ms).toFixed(2)}x`);
    }
    for (const [name, t] of sgTiles) {
      setTunedTiles(g, { lookup: (kind) => (kind === 'subgroup-matrix' ? t : undefined) });
      try {
        const r = await benchLinear(g, M, K, N, 'bf16', { variant: 'subgroup-matrix' }, name);
        if (r && base) console.log(`  ${name} / register at M=${M} K=${K} N=${N}: ${(base.ms / r.ms).toFixed(2)}x`);
      } finally {
        setTunedTiles(g, undefined);
      }
    }
  }
  const [L, H, Dh] = FULL ? [8832, 24, 128] : [128, 4, 128];
  const n = L * H * Dh;
  const [q, k, v] = [1, 2, 3].map((s) => upload(g, n, [1, L, H, Dh], 'f32', s));
  const flops = 4 * H * L * L * Dh;
  try {
    const { attention } = await import('../src/ops/attention.js');
    const base = record(`attention L=${L} H=${H} Dh=${Dh}`, 'register', await time(g, () => attention(q, k, v, { kernel: 'register' })), flops, 4 * n * 4);
    if (sg) {
      const r = record(`attention L=${L} H=${H} Dh=${Dh}`, 'subgroup-matrix', await time(g, () => attention(q, k, v, { kernel: 'subgroup-matrix' })), flops, 4 * n * 4);
      console.log(`  subgroup-matrix / register attention: ${(base.ms / r.ms).toFixed(2)}x`);
    }
    if (sg && canStoreF16(g)) {
      const [q16, k16, v16] = [1, 2, 3].map((s) => upload(g, n, [1, L, H, Dh], 'f16', s));
      try {
        const run = () => withActivations(g, 'f16', () => attention(q16, k16, v16, { kernel: 'subgroup-matrix' }));
        const r = record(`attention L=${L} H=${H} Dh=${Dh}`, 'subgroup-matrix f16 q/k/v/out', await time(g, run), flops, 4 * n * 2);
        console.log(`  subgroup-matrix f16 / register attention: ${(base.ms / r.ms).toFixed(2)}x`);
      } finally {
        for (const t of [q16, k16, v16]) t.dispose();
      }
    }
  } finally {
    for (const t of [q, k, v]) t.dispose();
  }
  // The DiT's fused QK-norm + RoPE (one q or k of the joint sequence, batch 2 under CFG)
  await benchQkNormRope(g, 2, L, H, Dh);
  // VAE convs: the implicit GEMM on subgroup matrices (src/ops/plan-conv.ts) against the direct f32 kernel
  // (first, so bench/torch_ref.py's summary compares the implicit GEMM where it runs).
  for (const [C, O, S] of VAE_CONVS) {
    const r = sg ? await benchConv(g, C, O, S, 'subgroup-matrix', 'implicit-gemm sgmat') : null;
    const base = await benchConv(g, C, O, S, 'direct', 'direct');
    if (r && base) console.log(`  implicit-gemm sgmat / direct conv ${C}->${O} ${S}²: ${(base.ms / r.ms).toFixed(2)}x`);
  }
  // The autotune's choice at the first shape (timed here, cached for later runs on this adapter).
  const [M, K, N] = shapes[0];
  const res = await tune(g, [{ M, K, N, wdt: 'bf16' }], { reps: FULL ? 3 : 1, maxCandidates: FULL ? undefined : 4 });
  for (const t of res) console.log(`autotune M=${M} K=${K} N=${N}: ${t.kind} ${JSON.stringify(t.best)} ${t.ms.toFixed(2)} ms (default ${t.tried[0].ms.toFixed(2)} ms, ${t.tried.length} tiles)`);
  if (!res.length) console.log(`autotune M=${M} K=${K} N=${N}: register path on this device (${g.kernels}), nothing to tune`);
}

/** A device with the subgroup-matrix feature requested when the adapter has it (else the default one). */
async function variantsGpu(): Promise<Gpu> {
  try {
    return await Gpu.create({ kernels: 'subgroup-matrix' });
  } catch {
    return await Gpu.create({ kernels: 'register' });
  }
}

async function main(): Promise<void> {
  // Loading throughput first (kernels-test/load-bench.ts): 1 GB bf16 checkpoint, raw read vs the load path.
  if (!args.has('--no-load')) {
    await benchLoading();
    if (args.has('--load-only')) return;
  }
  if (!args.has('--no-variants')) {
    const gv = await variantsGpu();
    try {
      const d = gv.describe();
      console.log(`variants on: ${d.vendor} ${d.architecture} ${d.description} (${FULL ? 'full sizes' : 'default sizes'}; kernels ${gv.kernels})`);
      console.log(`| ${'shape'.padEnd(38)} | ${'variant'.padEnd(20)} | ${'ms'.padStart(10)} | ${'GFLOP/s'.padStart(8)} | ${'GB/s'.padStart(7)} | ${'CPU ms'.padStart(7)} |`);
      await benchVariants(gv);
    } finally {
      gv.destroy();
    }
    if (args.has('--variants-only')) return;
  }
  const g = await Gpu.create();
  const d = g.describe();
  console.log(`device: ${d.vendor} ${d.architecture} ${d.description} (${FULL ? 'full sizes' : 'default sizes'})`);
  console.log(`| ${'shape'.padEnd(38)} | ${'variant'.padEnd(20)} | ${'ms'.padStart(10)} | ${'GFLOP/s'.padStart(8)} | ${'GB/s'.padStart(7)} | ${'CPU ms'.padStart(7)} |`);
  console.log(`|${'-'.repeat(40)}|${'-'.repeat(22)}|${'-'.repeat(12)}|${'-'.repeat(10)}|${'-'.repeat(9)}|${'-'.repeat(9)}|`);
  try {
    // Tiled vs naive at 1024³ f32: the acceptance ratio (tiled must be >= 2x naive on lavapipe).
    const S = 1024;
    const tiled = await benchLinear(g, S, S, S, 'f32', { variant: 'tiled' });
    const naive = await benchLinear(g, S, S, S, 'f32', { variant: 'naive' });
    if (tiled && naive) {
      const ratio = naive.ms / tiled.ms;
      console.log(`tiled / naive speed-up at ${S}³ f32: ${ratio.toFixed(2)}x wall, ${(naive.cpu / tiled.cpu).toFixed(2)}x CPU time` +
        (ratio >= 2 ? '' : '  (below the 2x target)'));
    }
    if (TILES) {
      const cfgs: TileConfig[] = [
        { tm: 8, tn: 4, wgm: 1, wgn: 32 }, { tm: 4, tn: 4, wgm: 4, wgn: 16 }, { tm: 8, tn: 4, wgm: 2, wgn: 32 },
        { tm: 8, tn: 2, wgm: 1, wgn: 64 }, { tm: 4, tn: 8, wgm: 1, wgn: 32 }, { tm: 12, tn: 4, wgm: 1, wgn: 32 },
      ];
      for (const t of cfgs)
        await benchLinear(g, S, S, S, 'f32', { variant: 'tiled', tile: t }, `tiled ${t.tm}x${t.tn} wg ${t.wgn}x${t.wgm}`);
    }
    const Ms = FULL ? [1, 4, 64, 256, 1024, 2 * (4096 + 4096 + 640)] : [1, 4, 64, 256];
    const Ns = FULL ? [3072, 9216, 12288, 21504] : [3072];
    for (const N of Ns) for (const M of Ms) await benchLinear(g, M, 3072, N, 'bf16');
    if (!FULL) for (const M of [1, 64]) await benchLinear(g, M, 3072, 12288, 'bf16');
    await benchLinear(g, FULL ? 4096 : 64, 3072, 3072, 'f32');
    await benchLinear(g, FULL ? 4096 : 64, 12288, 3072, 'bf16');
    if (FULL) await benchAttention(g, 8832, 24, 128);
    else await benchAttention(g, 256, 24, 128);
    if (FULL) {
      await benchConv(g, 512, 512, 128);
      await benchConv(g, 512, 512, 256);
      await benchConv(g, 256, 256, 512);
      await benchConv(g, 128, 128, 1024);
    } else await benchConv(g, 128, 128, 64);
    await benchGenerate(g);
    console.log(`default tile: ${DEFAULT_TILE.tm}x${DEFAULT_TILE.tn} per invocation, workgroup ${DEFAULT_TILE.wgn}x${DEFAULT_TILE.wgm}`);
  } finally {
    g.destroy();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

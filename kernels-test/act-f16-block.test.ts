/**
 * The DiT double block with f16 activation storage (ops/act-dtype.ts) where a stream has at most 4 token
 * rows per batch item (a 1-, 3- or 4-token text, a 2-token image): the joint v is projected per batch item
 * into its rows of the joint [txt ‖ img] q/k/v (models/dit-blocks.ts linearRowsInto: in place, or through a
 * copy where its rows do not start on a binding boundary; the test asks for 256-byte bindings). Before jointDtype the copy path met an f32 GEMM
 * result and the f16 joint and stopped; the block's outputs must match the same block with f32 storage
 * within the f16 tolerance of act-f16.test.ts's step (atol 0.05, rtol 0.01), through both paths.
 * Runs on an adapter that can store activations in f16 (the trixie root, scripts/sgmat-env.sh,
 * STEP1X_KERNELS=subgroup-matrix); elsewhere it says so and returns.
 */
import { getGpu, releaseGpu, randn, expectClose } from './harness.js';
import type { Gpu } from '../src/runtime/gpu.js';
import type { Tensor } from '../src/runtime/tensor.js';
import { TensorParam, WeightParam, type Module } from '../src/nn/module.js';
import { Weight } from '../src/nn/weight.js';
import { DoubleStreamBlock, RopePe } from '../src/models/dit-blocks.js';
import { REAL_DIT } from '../src/models/dit-config.js';
import { fluxPe } from '../src/ops/rope-tables.js';
import { canStoreF16, withActivations } from '../src/ops/act-dtype.js';

afterAll(releaseGpu);

/** Random f32 weights (~ 1/sqrt(K)), biases ~ 0.02, QK-norm scales near 1. */
function randomize<M extends Module>(g: Gpu, m: M, seed: number): M {
  let s = seed;
  for (const [name, p] of m.params()) {
    s += 1;
    if (p instanceof WeightParam) {
      const [N, K] = p.shape;
      p.set(Weight.plain(g.upload(randn(N * K, s).map((v) => v / Math.sqrt(K)), [N, K], 'f32', name)));
    } else if (p instanceof TensorParam)
      p.set(g.upload(randn(p.shape[0], s).map((v) => (name.endsWith('.scale') ? 1 + 0.1 * v : 0.02 * v)), [...p.shape], 'f32', name));
  }
  return m;
}

async function blockCase(g: Gpu, H: number, B: number, T: number, L: number): Promise<void> {
  const heads = 2, hd = H / heads, axes = [4, 6, 6];
  const blk = randomize(g, new DoubleStreamBlock({ ...REAL_DIT, axes_dim: axes, hidden_size: H, num_heads: heads, mlp_ratio: 2, qkv_bias: true }), 100 + H + T + L);
  const ids = new Float32Array((T + L) * 3);
  for (let i = 0; i < L; i++) [ids[(T + i) * 3 + 1], ids[(T + i) * 3 + 2]] = [Math.floor(i / 2), i % 2];
  const pe = RopePe.build(g, fluxPe(ids, 1, T + L, axes, 10000), 1, T + L, hd);
  const img = g.upload(randn(B * L * H, 1), [B, L, H]), txt = g.upload(randn(B * T * H, 2), [B, T, H]);
  const vec = g.upload(randn(B * H, 3), [B, H]);
  const run = async (act: 'f32' | 'f16'): Promise<Float32Array[]> => {
    const out = withActivations(g, act, () => blk.forward(img, txt, vec, pe));
    const host = [await g.readF32(out[0]), await g.readF32(out[1])];
    out.forEach((t: Tensor) => t.dispose());
    return host;
  };
  const want = await run('f32');
  const got = await run('f16');
  const what = `double block H=${H} B=${B} T=${T} L=${L}`;
  expectClose(`${what} img`, got[0], want[0], 0.05, 0.01);
  expectClose(`${what} txt`, got[1], want[1], 0.05, 0.01);
  for (const t of [img, txt, vec]) t.dispose();
  pe.dispose();
  blk.dispose();
}

describe('double block, f16 activation storage, streams of at most 4 rows per batch item', () => {
  test('≤ 4 text or image rows: the f32-storage result within the f16 tolerance (copy and in-place paths)', async () => {
    // storage bindings at 256 bytes (WebGPU's default, most discrete GPUs): lavapipe's 16 would put every row
    // of these widths on a binding boundary and the copy path would never run
    const g = await getGpu({ storageAlign: 256 });
    expect(g.storageAlign).toBe(256);
    if (!canStoreF16(g)) {
      console.log(`act-f16-block: not run here: adapter "${g.caps.description}" (kernels ${g.kernels}, precision ${g.precision}) cannot store activations in f16 (run in scripts/sgmat-env.sh with STEP1X_KERNELS=subgroup-matrix)`);
      return;
    }
    // H = 32, f32 joint rows of 128 bytes: a stream whose rows start at an odd row goes through the copy path,
    // with its GEMM over all B·rows: 6 or 16 rows write f16, widened into the joint ([1,1,6] image, [2,3,8]
    // both), 3 rows f32 ([1,1,3] image); rows 0 and 4 of one item are written in place ([1,4,2], and the
    // 1-row text of [1,1,*]). One width only: a new head dim compiles every block kernel again (minutes here)
    const cases: [number, number, number, number][] = [[32, 1, 1, 6], [32, 2, 3, 8], [32, 1, 4, 2], [32, 1, 1, 3]];
    for (const [H, B, T, L] of cases) {
      const t0 = performance.now();
      await blockCase(g, H, B, T, L);
      process.stderr.write(`  double block H=${H} B=${B} T=${T} L=${L}: f16 storage within the f16 tolerance (${((performance.now() - t0) / 1000).toFixed(0)} s)\n`);
    }
  }, 1_200_000); // pipeline compiles of the subgroup-matrix kernels on lavapipe
});

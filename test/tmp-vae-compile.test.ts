import { getGpu, releaseGpu, randn } from '../kernels-test/harness.js';
import { conv2d, groupNorm } from '../src/ops/conv.js';
import { attention } from '../src/ops/attention.js';
afterAll(releaseGpu);
test('compile times', async () => {
  const g = await getGpu();
  const x = g.upload(randn(32 * 8 * 6, 1), [1, 32, 8, 6]);
  const w3 = g.upload(randn(32 * 32 * 9, 2), [32, 32, 3, 3]);
  const w1 = g.upload(randn(32 * 32, 2), [32, 32, 1, 1]);
  const w3o = g.upload(randn(3 * 32 * 9, 2), [3, 32, 3, 3]);
  const b = g.upload(randn(32, 3), [32]);
  const tok = g.upload(randn(32 * 48, 1), [1, 48, 32]);
  const q = g.upload(randn(32 * 48, 1), [1, 48, 1, 32]);
  const cases: [string, () => unknown][] = [
    ['conv3', () => conv2d(x, w3, b, { pad: [1, 1, 1, 1] })],
    ['conv3 res', () => conv2d(x, w3, b, { pad: [1, 1, 1, 1], residual: x })],
    ['conv3 s2', () => conv2d(x, w3, b, { stride: 2, pad: [0, 1, 0, 1] })],
    ['conv3 ups', () => conv2d(x, w3, b, { pad: [1, 1, 1, 1], upsample2x: true })],
    ['conv3 O=3', () => conv2d(x, w3o, b.rows(0, 3), { pad: [1, 1, 1, 1] })],
    ['conv1', () => conv2d(x, w1, b)],
    ['conv1 outTok', () => conv2d(x, w1, b, { outTokens: true })],
    ['conv1 inTok res', () => conv2d(tok, w1, b, { inTokens: [8, 6], residual: x })],
    ['gn silu', () => groupNorm(x, 32, b, b, 1e-6, { silu: true })],
    ['gn', () => groupNorm(x, 32, b, b, 1e-6)],
    ['attn', () => attention(q, q, q)],
  ];
  for (const [n, f] of cases) {
    await g.sync();
    const t0 = Date.now();
    f();
    await g.sync();
    process.stderr.write(`${n}: ${Date.now() - t0} ms\n`);
  }
});

import { getGpu, releaseGpu, randn, expectClose } from './harness.js';
import * as ref from './ref/elementwise.js';
import { silu, geluTanh, geluErf, scale, add, mul, sub } from '../src/ops/elementwise.js';

afterAll(releaseGpu);

const SIZES = [1, 3, 17, 255, 4099];

describe('elementwise', () => {
  for (const n of SIZES) {
    test(`unary activations n=${n}`, async () => {
      const g = await getGpu();
      const x = randn(n, n, 6);
      const xt = g.upload(x, [n]);
      for (const [name, op, f] of [['silu', silu, ref.silu], ['gelu_tanh', geluTanh, ref.geluTanh], ['gelu_erf', geluErf, ref.geluErf]] as const) {
        const y = op(xt);
        expectClose(`${name} n=${n}`, await g.readF32(y), ref.map(x, f), 2e-6, 2e-6);
        y.dispose();
      }
      const s = scale(xt, 0.3611, -0.1159);
      expectClose(`scale n=${n}`, await g.readF32(s), ref.map(x, (v) => v * 0.3611 - 0.1159), 1e-6, 1e-6);
      xt.dispose();
    });
  }
  test('broadcast binary [17, 5] op [5]', async () => {
    const g = await getGpu();
    const a = randn(85, 1), b = randn(5, 2);
    const at = g.upload(a, [17, 5]), bt = g.upload(b, [5]);
    const refAdd = a.map((v, i) => v + b[i % 5]);
    expectClose('add', await g.readF32(add(at, bt)), refAdd, 0);
    expectClose('mul', await g.readF32(mul(at, bt)), a.map((v, i) => v * b[i % 5]), 0);
    expectClose('sub', await g.readF32(sub(at, at)), new Float32Array(85), 0);
    expect(() => add(at, g.upload(randn(3, 3), [3]))).toThrow(/does not broadcast/);
  });
});

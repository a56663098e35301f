/**
 * Host cost per dispatch on Dawn's Null backend (no GPU work; `backend=null`, 512 MiB cap), one run:
 *   raw, reused bind group   setPipeline + setBindGroup + dispatchWorkgroups with one bind group
 *                            (Dawn's floor: what any engine pays)
 *   raw, new bind group      the same with a bind group created per dispatch (the old runtime's way)
 *   runtime, g.dispatch      the runtime's path with the same kernel and buffers (uniform slot, binding
 *                            validation, bind-group cache, batching)
 *   runtime, silu op         ops/elementwise silu: the op wrapper plus a pooled output per call
 * The ratio runtime ÷ raw-reused is the number the issue bounds (≤ 1.5×). Printed by `npm run bench`.
 * The rows are interleaved over ROUNDS rounds and each reports its fastest round, so that load from other
 * processes (a shared machine) hits every row alike.
 *   node dist/kernels-test/host-bench.js [dispatches per round]
 */
import { Gpu, f32u } from '../src/runtime/gpu.js';
import { silu } from '../src/ops/elementwise.js';

const N = Number(process.argv[2] ?? 5120);
const ROUNDS = 7;
const BATCH = 256; // the runtime's uniform slots per submit: raw loops submit as often

function timeUs(n: number, f: () => void): number {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1000 / n;
}

async function main(): Promise<void> {
  const g = await Gpu.create({ dawnFlags: ['backend=null'] });
  try {
    const n = 4096;
    const x = g.upload(new Float32Array(n), [n]);
    const out = g.empty([n], 'f32', 'out');
    const kernel = { file: 'elementwise.wgsl', defines: { OP: 'silu' }, uniforms: [n, 1, n / 256, f32u(1), f32u(0)], bindings: [x, out], workgroups: [n / 256] as [number] };
    g.dispatch(kernel); // compiles the pipeline
    await g.sync();
    const dev = g.device;
    const pipe = g.pipeline('elementwise.wgsl', 'main', { OP: 'silu' });
    const ubuf = dev.createBuffer({ size: 256, usage: 0x40 | 0x8 });
    const entries = [
      { binding: 0, resource: { buffer: ubuf, offset: 0, size: 32 } },
      { binding: 1, resource: { buffer: x.storage.pooled.buffer } },
      { binding: 2, resource: { buffer: out.storage.pooled.buffer } },
    ];
    const layout = pipe.getBindGroupLayout(0); // the runtime's explicit layout: binding 0 at a dynamic offset
    const dyn = [0];
    const reused = dev.createBindGroup({ layout, entries });
    const raw = (fresh: boolean) => () => {
      for (let i = 0; i < N; i += BATCH) {
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass();
        for (let j = 0; j < BATCH && i + j < N; j++) {
          pass.setPipeline(pipe);
          pass.setBindGroup(0, fresh ? dev.createBindGroup({ layout, entries }) : reused, dyn);
          pass.dispatchWorkgroups(n / 256);
        }
        pass.end();
        dev.queue.submit([enc.finish()]);
      }
    };
    const before = g.bindGroupStats.created;
    const viaRuntime = () => {
      for (let i = 0; i < N; i++) g.dispatch(kernel);
      g.flush();
    };
    const viaOp = () => {
      for (let i = 0; i < N; i++) silu(x).dispose();
      g.flush();
    };
    // the new-bind-group row runs once, after the rounds: the garbage of its thousands of bind groups
    // would be collected during whichever row came next
    const cases: [string, () => void][] = [
      ['raw Dawn, reused bind group', raw(false)],
      ['runtime g.dispatch (same kernel and buffers)', viaRuntime],
      ['runtime silu op (pooled output per call)', viaOp],
    ];
    for (const [, f] of cases) f(); // warm-up: pipelines, bind groups
    await g.sync();
    const best = cases.map(() => Infinity);
    for (let r = 0; r < ROUNDS; r++)
      for (const [i, [, f]] of cases.entries()) {
        best[i] = Math.min(best[i], timeUs(N, f));
        await g.sync();
      }
    const rows: [string, number][] = cases.map(([name], i) => [name, best[i]]);
    rows.push(['raw Dawn, new bind group per dispatch (once)', timeUs(N, raw(true))]);
    await g.sync();
    const created = g.bindGroupStats.created - before;
    const base = rows[0][1];
    process.stdout.write(`host cost per dispatch, Dawn Null backend, best of ${ROUNDS} interleaved rounds of ${N} dispatches, one run (${g.describe().description || 'null adapter'})\n`);
    for (const [name, us] of rows) process.stdout.write(`  ${name.padEnd(46)} ${us.toFixed(2).padStart(7)} µs  ${(us / base).toFixed(2)}×\n`);
    process.stdout.write(`  bind groups created by the runtime rows: ${created} (of ${2 * (ROUNDS + 1) * N} runtime dispatches incl. warm-up)\n`);
    ubuf.destroy();
    x.dispose();
    out.dispose();
  } finally {
    g.destroy();
  }
}

await main();

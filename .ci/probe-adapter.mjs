// Exit 0 when Dawn finds a WebGPU adapter that can run a compute shader; 1 otherwise.
// Used by .ci/run to decide whether Mesa's lavapipe must be installed (an old Mesa may load but fail).
import { create, globals } from 'webgpu';
Object.assign(globalThis, globals);
const timer = setTimeout(() => { console.error('probe: timed out'); process.exit(1); }, 20000);
try {
  const gpu = create([]);
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new Error('no adapter');
  const device = await adapter.requestDevice();
  const code = '@group(0) @binding(0) var<storage, read_write> o: array<u32>; @compute @workgroup_size(1) fn main() { o[0] = 42u; }';
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const buf = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const rd = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] }));
  pass.dispatchWorkgroups(1);
  pass.end();
  enc.copyBufferToBuffer(buf, 0, rd, 0, 4);
  device.queue.submit([enc.finish()]);
  await rd.mapAsync(GPUMapMode.READ);
  const v = new Uint32Array(rd.getMappedRange())[0];
  rd.unmap();
  const info = adapter.info;
  device.destroy();
  clearTimeout(timer);
  if (v !== 42) throw new Error(`compute probe returned ${v}`);
  console.log(`probe: adapter ok (${info.vendor} ${info.description || info.architecture})`);
  process.exit(0);
} catch (e) {
  console.error(`probe: ${e.message}`);
  process.exit(1);
}

/**
 * Compute pipelines cached by their readable key (`file:entry:A=1,B=f32`), which is also the GPU label
 * of the shader module and the pipeline, so validation errors and profiles name the kernel variant.
 * Also remembers, per key, which bindings the shader declares read-only: a misaligned view bound
 * anywhere else is copied back after the dispatch (conservative: a declaration the pattern misses
 * counts as written).
 *
 * Layouts are explicit, read from the shader's `@group(0) @binding(n) var<…>` declarations, with the
 * uniform block (binding 0) at a dynamic offset: every dispatch of a batch writes its uniforms to its own
 * 256-byte slot of one buffer, and one bind group per (pipeline, storage buffers) serves all slots, so the
 * runtime's bind-group cache hits whatever slot a dispatch lands in. A shader whose declarations the
 * pattern does not find gets Dawn's 'auto' layout (and its bind groups then bind the slot statically).
 */
import { preprocess, pipelineKey, type Defines } from './shader-source.js';

export interface CachedPipeline {
  pipeline: GPUComputePipeline;
  /** Binding numbers declared `var<storage, read>` (or `var<storage>`). */
  readOnly: Set<number>;
  /** The bind group layout (explicit, or 'auto''s). */
  layout: GPUBindGroupLayout;
  /** Binding 0 is a uniform block bound at a dynamic offset. */
  dynamicUniform: boolean;
}

const DECL = /@group\(\s*0\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*<\s*(uniform|storage)\s*(?:,\s*(read_write|read)\s*)?>/g;
const COMPUTE = 0x4;

export class PipelineCache {
  private entries = new Map<string, CachedPipeline>();

  constructor(private readonly device: GPUDevice) {}

  get size(): number {
    return this.entries.size;
  }

  get(file: string, entry = 'main', defines: Defines = {}, key = pipelineKey(file, entry, defines)): CachedPipeline {
    let c = this.entries.get(key);
    if (!c) {
      const code = preprocess(file, defines);
      const module = this.device.createShaderModule({ code, label: key });
      const readOnly = new Set<number>();
      for (const m of code.matchAll(/@binding\(\s*(\d+)\s*\)[^;]*?var\s*<\s*storage\s*(?:,\s*read\s*)?>/g)) readOnly.add(Number(m[1]));
      const decls = [...code.matchAll(DECL)].map((m) => ({ binding: Number(m[1]), kind: m[2], access: m[3] }));
      const dynamicUniform = decls.some((d) => d.binding === 0 && d.kind === 'uniform');
      let layout: GPUBindGroupLayout | undefined;
      let pipeline: GPUComputePipeline;
      if (decls.length) {
        layout = this.device.createBindGroupLayout({
          label: key,
          entries: decls.map((d) => ({
            binding: d.binding,
            visibility: COMPUTE,
            buffer: d.kind === 'uniform' ? { type: 'uniform', hasDynamicOffset: d.binding === 0 } : { type: d.access === 'read_write' ? 'storage' : 'read-only-storage' },
          })),
        });
        const pl = this.device.createPipelineLayout({ bindGroupLayouts: [layout], label: key });
        pipeline = this.device.createComputePipeline({ layout: pl, compute: { module, entryPoint: entry }, label: key });
      } else pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
      c = { pipeline, readOnly, layout: layout ?? pipeline.getBindGroupLayout(0), dynamicUniform: decls.length > 0 && dynamicUniform };
      this.entries.set(key, c);
    }
    return c;
  }
}

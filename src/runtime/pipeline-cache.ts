/**
 * Compute pipelines cached by their readable key (`file:entry:A=1,B=f32`), which is also the GPU label
 * of the shader module and the pipeline, so validation errors and profiles name the kernel variant.
 * Also remembers, per key, which bindings the shader declares read-only: a misaligned view bound
 * anywhere else is copied back after the dispatch (conservative: a declaration the pattern misses
 * counts as written).
 */
import { preprocess, pipelineKey, type Defines } from './shader-source.js';

export interface CachedPipeline {
  pipeline: GPUComputePipeline;
  /** Binding numbers declared `var<storage, read>` (or `var<storage>`). */
  readOnly: Set<number>;
}

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
      const pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
      const readOnly = new Set<number>();
      for (const m of code.matchAll(/@binding\(\s*(\d+)\s*\)[^;]*?var\s*<\s*storage\s*(?:,\s*read\s*)?>/g)) readOnly.add(Number(m[1]));
      c = { pipeline, readOnly };
      this.entries.set(key, c);
    }
    return c;
  }
}

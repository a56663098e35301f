/**
 * Bind groups cached by what they bind. Creating a bind group is most of Dawn's per-dispatch host cost
 * (Null backend: 16 µs per dispatch with a new one, 2.9 µs with a reused one), and a DiT step is ≈ 1,600
 * dispatches that repeat every step: the pool hands the same buffers back (lowest id first), and the
 * uniform block is bound at a dynamic offset (runtime/pipeline-cache.ts), so the keys repeat.
 *
 * Key: pipeline key, then per entry the buffer's id, offset and size. A bind group keeps its buffers
 * alive in Dawn, so the pool tells the cache when it destroys a buffer (`evictBuffer`), and the cache is
 * bounded (least recently used out first).
 */
export interface BindEntry {
  binding: number;
  buffer: GPUBuffer;
  /** Stable id of the buffer (the pool's). */
  id: number;
  offset: number;
  size: number;
}

export class BindGroupCache {
  private readonly groups = new Map<string, { bg: GPUBindGroup; ids: number[] }>();
  /** Buffer id → keys of the groups that bind it. */
  private readonly byBuffer = new Map<number, Set<string>>();
  hits = 0;
  misses = 0;

  constructor(
    private readonly device: GPUDevice,
    readonly capacity = 16384,
  ) {}

  get size(): number {
    return this.groups.size;
  }

  get(pipelineKey: string, layout: GPUBindGroupLayout, entries: readonly BindEntry[]): GPUBindGroup {
    let key = pipelineKey;
    for (const e of entries) key += `|${e.binding}:${e.id}@${e.offset}+${e.size}`;
    const hit = this.groups.get(key);
    if (hit) {
      this.hits++;
      this.groups.delete(key); // re-insert: most recently used last
      this.groups.set(key, hit);
      return hit.bg;
    }
    this.misses++;
    const bg = this.device.createBindGroup({
      layout,
      entries: entries.map((e) => ({ binding: e.binding, resource: { buffer: e.buffer, offset: e.offset, size: e.size } })),
      label: pipelineKey,
    });
    const ids = [...new Set(entries.map((e) => e.id))];
    this.groups.set(key, { bg, ids });
    for (const id of ids) {
      let s = this.byBuffer.get(id);
      if (!s) this.byBuffer.set(id, (s = new Set()));
      s.add(key);
    }
    if (this.groups.size > this.capacity) this.drop(this.groups.keys().next().value as string);
    return bg;
  }

  private drop(key: string): void {
    const g = this.groups.get(key);
    if (!g) return;
    this.groups.delete(key);
    for (const id of g.ids) {
      const s = this.byBuffer.get(id);
      s?.delete(key);
      if (s && !s.size) this.byBuffer.delete(id);
    }
  }

  /** Forget every group that binds buffer `id` (about to be destroyed). */
  evictBuffer(id: number): void {
    const keys = this.byBuffer.get(id);
    if (!keys) return;
    for (const k of [...keys]) this.drop(k);
  }

  clear(): void {
    this.groups.clear();
    this.byBuffer.clear();
  }
}

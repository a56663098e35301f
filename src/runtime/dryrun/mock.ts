/**
 * A WebGPU implementation that does no GPU work: it answers like the adapter of a DeviceProfile (info,
 * limits, features, subgroup-matrix configs) and tells a Recorder what the code asks of it. Readbacks
 * return zeros. Only the surface src/runtime uses is implemented; anything else throws, so a new use
 * fails loudly instead of being counted wrong.
 */
import type { DeviceProfile } from './profiles.js';
import { Recorder, type Tracked } from './recorder.js';

class DryBuffer implements Tracked {
  lastUse = 0;
  destroyed = false;
  private mapped: ArrayBuffer | null = null;
  constructor(
    private readonly rec: Recorder,
    readonly size: number,
    readonly usage: number,
    readonly label: string,
  ) {}
  async mapAsync(): Promise<void> {
    this.rec.synced(); // the copy into this staging buffer must have run
  }
  getMappedRange(offset = 0, size = this.size - offset): ArrayBuffer {
    this.mapped ??= new ArrayBuffer(this.size);
    return offset === 0 && size === this.size ? this.mapped : this.mapped.slice(offset, offset + size);
  }
  unmap(): void {
    this.mapped = null;
  }
  destroy(): void {
    this.rec.destroyed(this);
  }
}

interface DryBindGroup {
  buffers: DryBuffer[];
}

class DryPass {
  constructor(
    private readonly rec: Recorder,
    private readonly uses: Set<DryBuffer>,
  ) {}
  setPipeline(): void {}
  setBindGroup(_i: number, bg: DryBindGroup): void {
    for (const b of bg.buffers) this.uses.add(b);
  }
  dispatchWorkgroups(): void {
    this.rec.dispatch();
  }
  end(): void {}
}

class DryEncoder {
  readonly uses = new Set<DryBuffer>();
  constructor(private readonly rec: Recorder) {}
  beginComputePass(): DryPass {
    return new DryPass(this.rec, this.uses);
  }
  copyBufferToBuffer(src: DryBuffer, _so: number, dst: DryBuffer, _do: number, size: number): void {
    this.rec.copied(size);
    this.uses.add(src);
    this.uses.add(dst);
  }
  clearBuffer(b: DryBuffer): void {
    this.uses.add(b);
  }
  resolveQuerySet(_q: unknown, _f: number, _c: number, dst: DryBuffer): void {
    this.uses.add(dst);
  }
  finish(): { uses: Set<DryBuffer> } {
    return { uses: this.uses };
  }
}

class DryDevice extends EventTarget {
  readonly queue;
  readonly limits: Record<string, number>;
  readonly features: Set<string>;
  readonly lost: Promise<{ reason: string; message: string }>;
  private resolveLost!: (v: { reason: string; message: string }) => void;
  readonly label = 'step1x';

  constructor(
    readonly rec: Recorder,
    profile: DeviceProfile,
    features: string[],
  ) {
    super();
    this.limits = { ...profile.limits };
    this.features = new Set(features);
    this.lost = new Promise((r) => (this.resolveLost = r));
    this.queue = {
      submit: (cbs: { uses: Set<DryBuffer> }[]) => {
        const uses = new Set<DryBuffer>();
        for (const cb of cbs) for (const b of cb.uses) uses.add(b);
        rec.submitted(uses);
      },
      writeBuffer: (b: DryBuffer) => rec.written(b),
      onSubmittedWorkDone: async () => rec.synced(),
    };
  }
  createBuffer(d: { size: number; usage: number; label?: string }): DryBuffer {
    const b = new DryBuffer(this.rec, d.size, d.usage, d.label ?? '');
    this.rec.created(b);
    return b;
  }
  createShaderModule(d: { label?: string }): object {
    return { label: d.label ?? '', getCompilationInfo: async () => ({ messages: [] }) };
  }
  createComputePipeline(d: { label?: string }): object {
    return { label: d.label ?? '', getBindGroupLayout: () => ({}) };
  }
  createBindGroupLayout(d: { label?: string }): object {
    return { label: d.label ?? '' };
  }
  createPipelineLayout(d: { label?: string }): object {
    return { label: d.label ?? '' };
  }
  createBindGroup(d: { entries: { resource: { buffer?: DryBuffer } }[] }): DryBindGroup {
    this.rec.bindGroup();
    return { buffers: d.entries.map((e) => e.resource.buffer).filter((b): b is DryBuffer => !!b) };
  }
  createCommandEncoder(): DryEncoder {
    return new DryEncoder(this.rec);
  }
  createQuerySet(): object {
    return { destroy() {} };
  }
  pushErrorScope(): void {}
  async popErrorScope(): Promise<null> {
    return null;
  }
  destroy(): void {
    this.resolveLost({ reason: 'destroyed', message: '' });
  }
}

class DryAdapter {
  readonly info: Record<string, unknown>;
  readonly limits: Record<string, number>;
  readonly features: Set<string>;
  constructor(
    private readonly profile: DeviceProfile,
    private readonly rec: Recorder,
  ) {
    this.info = {
      vendor: profile.vendor, architecture: profile.architecture, device: profile.device, description: profile.description,
      isFallbackAdapter: profile.isFallbackAdapter, subgroupMinSize: profile.subgroupMinSize, subgroupMaxSize: profile.subgroupMaxSize,
      subgroupMatrixConfigs: profile.subgroupMatrixConfigs,
    };
    this.limits = { ...profile.limits };
    this.features = new Set(profile.features);
  }
  async requestDevice(d: { requiredFeatures?: string[] } = {}): Promise<DryDevice> {
    for (const f of d.requiredFeatures ?? []) if (!this.features.has(f)) throw new TypeError(`feature ${f} is not supported by ${this.profile.id}`);
    return new DryDevice(this.rec, this.profile, d.requiredFeatures ?? []);
  }
}

/** The adapter of `profile`, recording into `rec`; typed as Dawn's so the runtime uses it unchanged. */
export function dryAdapter(profile: DeviceProfile, rec: Recorder): GPUAdapter {
  return new DryAdapter(profile, rec) as unknown as GPUAdapter;
}

/** The recorder behind a device made by a dry adapter, else undefined. */
export function recorderOf(device: GPUDevice): Recorder | undefined {
  return device instanceof DryDevice ? device.rec : undefined;
}

/**
 * Adapter and device acquisition on Dawn (npm `webgpu`). The only place a GPUDevice is created.
 *
 * - Requests the adapter's real limits (binding size, buffer size, workgroup storage) and only the
 *   features we use (`shader-f16`, `subgroups`, `timestamp-query`) when present.
 * - No adapter → Step1xError(NO_GPU) naming the fix, never a stack trace.
 * - Uncaptured errors and device loss are recorded and rethrown at the next sync point
 *   (flush / readback), so a bad dispatch surfaces as an error where the caller awaits.
 * - `destroy()` must be called when a command ends: Dawn keeps Node's event loop alive otherwise.
 */
import { ExitCode, GpuOutOfMemory, Step1xError } from '../errors.js';
import { dryAdapter, dryRunLag, dryRunProfile, recorderOf, Recorder } from './dryrun/index.js';
import { readCapabilities, resolveKernels, resolvePrecision, featuresFor, requestedKernels, requestedPrecision, SGMAT_DAWN_FLAGS, type Capabilities, type KernelFamily, type KernelSettings, type Precision } from './caps.js';

export const WANTED_FEATURES = ['shader-f16', 'subgroups', 'timestamp-query'] as const;

/** How a run's device is made: the kernel settings (unset: STEP1X_KERNELS / STEP1X_PRECISION, then auto) and more. */
export interface DeviceOptions extends KernelSettings {
  /** Pretend the device can bind at most this many bytes per storage binding (tests the split paths). */
  maxBindingBytes?: number;
  /**
   * Request this storage-binding offset alignment instead of the adapter's own (a power of two, at least the
   * adapter's): tests reach the paths of devices that bind at 256 bytes (WebGPU's default) on lavapipe's 16.
   */
  storageAlign?: number;
  /** Vulkan/Dawn backend toggles passed to `create()`. */
  dawnFlags?: string[];
  powerPreference?: GPUPowerPreference;
}

export interface AdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter: boolean;
  features: string[];
  limits: Record<string, number>;
}

const instances: GPU[] = [];
let dawn: { create(flags: string[]): GPU; globals: object } | undefined;

async function loadDawn(): Promise<{ create(flags: string[]): GPU; globals: object }> {
  if (dawn) return dawn;
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  try {
    const mod = (await import('webgpu')) as unknown as { create(flags: string[]): GPU; globals: object };
    dawn = mod;
  } catch (e) {
    throw new Step1xError(
      `cannot load the WebGPU binding (npm "webgpu"/Dawn): ${(e as Error).message}. Run "npm ci" in the step1x directory.`,
      ExitCode.NO_GPU,
    );
  }
  Object.assign(globalThis, dawn.globals);
  return dawn;
}

const NO_ADAPTER_HELP =
  'no WebGPU adapter found. Install a GPU driver with Vulkan (Linux), Metal (macOS) or D3D12 (Windows) support; ' +
  'on a Linux machine without a GPU install Mesa lavapipe: add bookworm-backports and run ' +
  '"apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1" (see README, Set-up)';

export async function requestAdapter(opts: DeviceOptions = {}): Promise<GPUAdapter> {
  // STEP1X_DRYRUN=<profile>: a device that does no GPU work and records what it is asked (dryrun/).
  const dry = dryRunProfile();
  if (dry) return dryAdapter(dry, new Recorder({ id: dry.id, description: dry.description, memoryBytes: dry.memoryBytes }, dryRunLag()));
  const { create } = await loadDawn();
  // The GPU instance must outlive every adapter and device made from it: if it is garbage-collected,
  // Dawn tears down the instance under a live device and the process aborts. Keep it module-level.
  // The subgroup-matrix feature and its configs are only listed with allow_unsafe_apis; families
  // that never use it do without the flag.
  const k = requestedKernels(opts);
  const flags = [...(opts.dawnFlags ?? []), ...(k === 'auto' || k === 'subgroup-matrix' ? SGMAT_DAWN_FLAGS : [])];
  const gpu = create(flags);
  instances.push(gpu);
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
  } catch {
    adapter = null;
  }
  if (!adapter) throw new Step1xError(NO_ADAPTER_HELP, ExitCode.NO_GPU);
  return adapter;
}

export function describeAdapter(adapter: GPUAdapter): AdapterDescription {
  const info = adapter.info;
  const limits: Record<string, number> = {};
  const l = adapter.limits as unknown as Record<string, number>;
  for (const k of LIMIT_NAMES) if (typeof l[k] === 'number') limits[k] = l[k];
  return {
    vendor: info?.vendor ?? '',
    architecture: info?.architecture ?? '',
    device: info?.device ?? '',
    description: info?.description ?? '',
    isFallbackAdapter: Boolean((info as unknown as { isFallbackAdapter?: boolean })?.isFallbackAdapter),
    features: [...adapter.features].sort(),
    limits,
  };
}

const LIMIT_NAMES = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
  'maxUniformBufferBindingSize',
  'minStorageBufferOffsetAlignment',
  'minUniformBufferOffsetAlignment',
  'maxBindGroups',
];

export interface DeviceHandle {
  adapter: GPUAdapter;
  device: GPUDevice;
  features: Set<string>;
  /** Effective per-binding byte limit (may be lowered by options for tests). */
  maxBindingBytes: number;
  maxBufferBytes: number;
  maxWorkgroupStorage: number;
  maxWorkgroupsPerDim: number;
  /** minStorageBufferOffsetAlignment: storage bindings start on multiples of it (runtime/window.ts). */
  storageAlign: number;
  /** First uncaptured error or loss reason; thrown at the next sync point. */
  pendingError: Error | null;
  lost: boolean;
  /** Set when the device was lost (not by our own destroy()): every later sync point throws it. */
  lostError: Step1xError | null;
  /** What the adapter offers (plans read it). */
  caps: Capabilities;
  /** The kernel family asked for ('auto' unless --kernels / STEP1X_KERNELS named one). */
  requestedKernels: KernelFamily;
  /** The kernel family in force (the one asked for, resolved on this adapter). */
  kernels: Exclude<KernelFamily, 'auto'>;
  precision: Precision;
  /** Set on a dry-run device (STEP1X_DRYRUN): what the run asked of it. */
  dryrun?: Recorder;
}

export async function createDevice(opts: DeviceOptions = {}): Promise<DeviceHandle> {
  const adapter = await requestAdapter(opts);
  const al = adapter.limits;
  const requiredLimits: Record<string, number> = {};
  for (const k of LIMIT_NAMES) {
    // the adapter's binding offset alignment, not WebGPU's default 256 (runtime/window.ts binds at it)
    if (k.startsWith('min') && k !== 'minStorageBufferOffsetAlignment') continue;
    const v = (al as unknown as Record<string, number>)[k];
    if (typeof v === 'number') requiredLimits[k] = k === 'minStorageBufferOffsetAlignment' && opts.storageAlign ? Math.max(v, opts.storageAlign) : v;
  }
  const caps = readCapabilities(adapter);
  const requested = requestedKernels(opts);
  const kernels = resolveKernels(caps, requested);
  // Only the features the chosen family's plans use (WANTED_FEATURES, plus subgroup matrices).
  const requiredFeatures = featuresFor(caps, kernels) as GPUFeatureName[];
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures, requiredLimits, label: 'step1x' });
  } catch (e) {
    throw new Step1xError(`WebGPU device request failed: ${(e as Error).message}`, ExitCode.NO_GPU);
  }
  const handle: DeviceHandle = {
    adapter,
    device,
    features: new Set(requiredFeatures),
    maxBindingBytes: Math.min(device.limits.maxStorageBufferBindingSize, opts.maxBindingBytes ?? Infinity),
    maxBufferBytes: device.limits.maxBufferSize,
    maxWorkgroupStorage: device.limits.maxComputeWorkgroupStorageSize,
    maxWorkgroupsPerDim: device.limits.maxComputeWorkgroupsPerDimension,
    storageAlign: device.limits.minStorageBufferOffsetAlignment,
    pendingError: null,
    lost: false,
    lostError: null,
    caps,
    requestedKernels: requested,
    kernels,
    precision: resolvePrecision(kernels, requestedPrecision(opts)),
    dryrun: recorderOf(device),
  };
  device.addEventListener('uncapturederror', (ev) => {
    const err = (ev as GPUUncapturedErrorEvent).error;
    if (!handle.pendingError) {
      const oom = err.constructor?.name === 'GPUOutOfMemoryError' || /out of memory/i.test(err.message);
      handle.pendingError = oom
        ? new GpuOutOfMemory(`out of GPU memory: ${err.message.split('\n')[0]}. Try a smaller --size or --vram-budget`)
        : new Step1xError(`GPU error: ${err.message}`, ExitCode.GPU);
    }
  });
  void device.lost.then((info) => markDeviceLost(handle, info));
  return handle;
}

/**
 * Record a device loss. A loss we caused (reason 'destroyed') is silent; any other makes every later
 * sync point throw, since nothing recorded on a lost device ever runs.
 */
export function markDeviceLost(handle: DeviceHandle, info: { reason: string; message: string }): void {
  handle.lost = true;
  if (info.reason === 'destroyed') return;
  handle.lostError = new Step1xError(
    `GPU device lost (${info.reason}): ${info.message || 'no message'}. The driver may have reset (a kernel ran too long, or memory ran out); rerun, or lower --vram-budget / --size`,
    ExitCode.GPU,
  );
}

/**
 * Adapter capabilities and the kernel-family / precision settings every plan function reads.
 *
 * One `Capabilities` object per device: features, subgroup sizes, the subgroup-matrix configs Dawn
 * reports (`adapter.info.subgroupMatrixConfigs`, only with `enable-dawn-features=allow_unsafe_apis`),
 * the limits plans size tiles by, and whether the adapter is a CPU rasteriser (lavapipe, SwiftShader).
 *
 * Kernel family: `--kernels auto|subgroup-matrix|tiled|register` (CLI, global option) or STEP1X_KERNELS.
 *   auto             subgroup-matrix GEMM/attention on GPUs that report an f16 config, register-tiled
 *                    kernels on CPU adapters (their matrix "units" are emulated, the register path is faster)
 *   subgroup-matrix  forced (tests, CI in the trixie root, benchmarks); an adapter without the feature is
 *                    a NO_GPU error naming the fix, never a silent fallback
 *   tiled            workgroup-memory tiled f32 GEMM (GPUs without matrix units)
 *   register         the register-tiled kernels tuned for lavapipe (the historical default)
 * Precision: `--precision f32|mixed` or STEP1X_PRECISION; mixed (f16 operands, f32 accumulate) is the
 * default where the subgroup-matrix family is in use, f32 forces the f32 kernels of the chosen family.
 */
import { ExitCode, Step1xError } from '../errors.js';

export type KernelFamily = 'auto' | 'subgroup-matrix' | 'tiled' | 'register';
export type Precision = 'f32' | 'mixed';
export const KERNEL_FAMILIES: readonly KernelFamily[] = ['auto', 'subgroup-matrix', 'tiled', 'register'];
export const PRECISIONS: readonly Precision[] = ['f32', 'mixed'];
export const SGMAT_FEATURE = 'chromium-experimental-subgroup-matrix';
/** Lets a pipeline pin its subgroup size (`@subgroup_size`): Intel's matrix configs need 16, AMD's 32. */
export const SUBGROUP_SIZE_CONTROL = 'subgroup-size-control';
/** Dawn toggles: allow_unsafe_apis exposes the experimental subgroup-matrix feature and its configs; NVIDIA's Vulkan f16 (needed by the f16 operands) is off in Dawn unless vulkan_enable_f16_on_nvidia is set (unknown toggles are ignored elsewhere). */
export const SGMAT_DAWN_FLAGS = ['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia'];

export interface MatrixConfig {
  component: string;
  result: string;
  M: number;
  N: number;
  K: number;
}

export interface Capabilities {
  vendor: string;
  architecture: string;
  description: string;
  /** lavapipe / llvmpipe / SwiftShader or an adapter marked fallback. */
  cpu: boolean;
  features: Set<string>;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /** f16-operand configs with f32 results (GEMM and attention), preferred (largest) first. */
  matrixConfigs: MatrixConfig[];
  /** f16-operand configs with f16 results (Metal's only f16 ones; the GEMM adds each k-chunk into f32). */
  f16ResultConfigs: MatrixConfig[];
  /**
   * f32→f32 configs (Dawn's Metal backend: 8x8x8). Recorded, used by no plan: at --precision mixed every
   * adapter reporting them also reports f16→f16, which the GEMM runs (twice the operand rate, half the
   * workgroup memory); at --precision f32 an f32-operand gemm-sgmat would have no environment to be tested
   * in (lavapipe offers f16/u8/i8 configs only, NVIDIA none of f32), so the f32 workgroup-tiled kernel runs.
   */
  f32Configs: MatrixConfig[];
  /** Every config the adapter reports (printed by `step1x devices`). */
  allMatrixConfigs: MatrixConfig[];
  maxWorkgroupStorage: number;
  maxInvocations: number;
  maxWorkgroupSizeX: number;
}

interface RawConfig {
  componentType?: string;
  resultComponentType?: string;
  M?: number;
  N?: number;
  K?: number;
}

export function readCapabilities(adapter: GPUAdapter): Capabilities {
  const info = (adapter.info ?? {}) as unknown as Record<string, unknown>;
  const str = (k: string) => (typeof info[k] === 'string' ? (info[k] as string) : '');
  const num = (k: string, d: number) => (typeof info[k] === 'number' ? (info[k] as number) : d);
  const raw = Array.isArray(info.subgroupMatrixConfigs) ? (info.subgroupMatrixConfigs as RawConfig[]) : [];
  const all = raw.map((c) => ({
    component: String(c.componentType),
    result: String(c.resultComponentType),
    M: Number(c.M),
    N: Number(c.N),
    K: Number(c.K),
  }));
  const description = str('description');
  const l = adapter.limits;
  const features = new Set<string>([...adapter.features]);
  return {
    vendor: str('vendor'),
    architecture: str('architecture'),
    description,
    cpu: Boolean(info.isFallbackAdapter) || /llvmpipe|lavapipe|swiftshader|software/i.test(`${description} ${str('device')} ${str('architecture')}`),
    features,
    subgroupMinSize: num('subgroupMinSize', 4),
    subgroupMaxSize: num('subgroupMaxSize', 128),
    allMatrixConfigs: all,
    matrixConfigs: configsOf(all, 'f32'),
    f16ResultConfigs: configsOf(all, 'f16'),
    f32Configs: configsOf(all, 'f32', 'f32'),
    maxWorkgroupStorage: l.maxComputeWorkgroupStorageSize,
    maxInvocations: l.maxComputeInvocationsPerWorkgroup,
    maxWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
  };
}

/** `component`-operand (default f16) configs with `result` results, largest first. */
export function configsOf(all: MatrixConfig[], result: 'f32' | 'f16', component: 'f16' | 'f32' = 'f16'): MatrixConfig[] {
  return all.filter((c) => c.component === component && c.result === result).sort((a, b) => b.M * b.N * b.K - a.M * a.N * a.K);
}

/** Whether the adapter can run our subgroup-matrix GEMM (the feature, f16, subgroups, an f16→f32 or f16→f16 config). */
export function hasMatrixUnits(c: Capabilities): boolean {
  return c.features.has(SGMAT_FEATURE) && c.features.has('shader-f16') && c.features.has('subgroups') && c.matrixConfigs.length + c.f16ResultConfigs.length > 0;
}

// ---- settings (Gpu.create options: the CLI's --kernels / --precision, else the environment) ----------

/** The kernel settings a run asks for, passed to Gpu.create (unset: the environment, then auto). */
export interface KernelSettings {
  kernels?: KernelFamily;
  precision?: Precision;
}

function parse<T extends string>(what: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v))
    throw new Step1xError(`${what} "${v}" is not one of ${allowed.join(', ')}`, ExitCode.USAGE);
  return v as T;
}

/** The CLI's --kernels / --precision strings, validated (a bad value is a USAGE error naming the choices). */
export function parseKernelSettings(s: { kernels?: string; precision?: string }): KernelSettings {
  return {
    kernels: s.kernels === undefined ? undefined : parse('--kernels', s.kernels, KERNEL_FAMILIES),
    precision: s.precision === undefined ? undefined : parse('--precision', s.precision, PRECISIONS),
  };
}

/** The family asked for: the setting, else STEP1X_KERNELS, else auto. */
export function requestedKernels(s: KernelSettings = {}): KernelFamily {
  if (s.kernels) return s.kernels;
  const e = process.env.STEP1X_KERNELS;
  return e ? parse('STEP1X_KERNELS', e, KERNEL_FAMILIES) : 'auto';
}

/** The precision asked for: the setting, else STEP1X_PRECISION, else the family's default (undefined). */
export function requestedPrecision(s: KernelSettings = {}): Precision | undefined {
  if (s.precision) return s.precision;
  const e = process.env.STEP1X_PRECISION;
  return e ? parse('STEP1X_PRECISION', e, PRECISIONS) : undefined;
}

/** The family `auto` resolves to on this adapter. */
export function resolveKernels(c: Capabilities, k: KernelFamily): Exclude<KernelFamily, 'auto'> {
  if (k === 'subgroup-matrix' && !hasMatrixUnits(c))
    throw new Step1xError(
      `--kernels subgroup-matrix: the adapter (${c.description || c.vendor || 'unknown'}) does not offer ${SGMAT_FEATURE} with shader-f16, subgroups and an ` +
        'f16→f32 or f16→f16 config (Vulkan with VK_KHR_cooperative_matrix: NVIDIA, AMD RDNA3+, Intel Xe2 with Mesa ≥ 25.2, Mesa ≥ 26 lavapipe; ' +
        'Metal on Apple silicon with f16→f16 configs; Dawn lists them only with allow_unsafe_apis); on a CPU machine use scripts/sgmat-env.sh',
      ExitCode.NO_GPU,
    );
  if (k !== 'auto') return k;
  if (c.cpu) return 'register';
  return hasMatrixUnits(c) ? 'subgroup-matrix' : 'tiled';
}

/** Features the chosen family's plans use, of those the adapter has. */
export function featuresFor(c: Capabilities, family: Exclude<KernelFamily, 'auto'>): string[] {
  const want = ['shader-f16', 'subgroups', 'timestamp-query'];
  if (family === 'subgroup-matrix') want.push(SGMAT_FEATURE, SUBGROUP_SIZE_CONTROL);
  return want.filter((f) => c.features.has(f));
}

/** Effective precision: mixed where matrix units are in use, else f32 (an explicit setting wins). */
export function resolvePrecision(family: Exclude<KernelFamily, 'auto'>, p: Precision | undefined): Precision {
  return p ?? (family === 'subgroup-matrix' ? 'mixed' : 'f32');
}

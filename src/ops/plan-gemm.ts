/**
 * GEMM kernel plan: (shape, weight dtype, capabilities, family, precision) → variant, tile, defines.
 *
 * Variants beyond the register-tiled kernels of shaders/gemm.wgsl (which src/ops/linear.ts keeps):
 *   subgroup-matrix  shaders/gemm-sgmat.wgsl: f16 operands in workgroup memory, f32 accumulation on the
 *                    adapter's matrix config, f32 recompute of any tile whose inputs leave the f16 range
 *   workgroup        shaders/gemm-wg.wgsl: f32 workgroup-tiled (GPUs without matrix units, and the
 *                    subgroup-matrix family at --precision f32)
 * A `null` plan means the register path (gemv for M <= 4, register-tiled otherwise).
 *
 * Family `auto` on a GPU with matrix units leaves M <= 4 to gemv (weight streaming dominates there);
 * a forced family (--kernels / STEP1X_KERNELS) takes every shape, so tests exercise it at M = 1 too.
 * Tiles come from the autotune cache when present (src/ops/tune.ts), else from the defaults below,
 * always checked against the device's workgroup storage and invocation limits.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Tensor, DType } from '../runtime/tensor.js';
import type { Capabilities, KernelFamily, MatrixConfig, Precision } from '../runtime/caps.js';
import { requestedKernels } from '../runtime/caps.js';
import { fail } from '../errors.js';

export type GemmKind = 'subgroup-matrix' | 'workgroup';

/** gemm-sgmat.wgsl geometry: SGM x SGN subgroups, each PM x PN fragments, k-tile BK. */
export interface SgmatTile {
  sgm: number;
  sgn: number;
  pm: number;
  pn: number;
  bk: number;
}
/** gemm-wg.wgsl geometry: BM x BN tile, BK k-slice, TM x TN per lane. */
export interface WgTile {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
}

export interface GemmPlan {
  kind: GemmKind;
  file: string;
  defines: Record<string, string | number | boolean>;
  /** Output rows / columns per workgroup. */
  bm: number;
  bn: number;
  /** Binds the overflow counter (subgroup-matrix only). */
  ovf: boolean;
  /** One line for `step1x devices` and the bench. */
  describe: string;
}

export interface GemmShape {
  M: number;
  N: number;
  K: number;
  wdt: DType;
}

export const DEFAULT_SGMAT_TILE: SgmatTile = { sgm: 2, sgn: 2, pm: 2, pn: 2, bk: 32 };
export const DEFAULT_WG_TILE: WgTile = { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };

/** Tile overrides chosen by the autotuner (set per Gpu by src/ops/tune.ts). */
export interface TunedTiles {
  lookup(kind: GemmKind, s: GemmShape): SgmatTile | WgTile | undefined;
}
const tuned = new WeakMap<Gpu, TunedTiles>();
const loaded = new WeakSet<Gpu>();
let loader: ((g: Gpu) => void) | undefined;
export function setTunedTiles(g: Gpu, t: TunedTiles | undefined): void {
  loaded.add(g);
  if (t) tuned.set(g, t);
  else tuned.delete(g);
}
/** src/ops/tune.ts registers the cache reader here (no import cycle); run once per device on first plan. */
export function registerTuneLoader(f: (g: Gpu) => void): void {
  loader = f;
}
function tunedFor(g: Gpu): TunedTiles | undefined {
  if (!loaded.has(g)) {
    loaded.add(g);
    loader?.(g);
  }
  return tuned.get(g);
}

export function sgmatStorageBytes(cfg: MatrixConfig, t: SgmatTile): number {
  const bm = t.sgm * t.pm * cfg.M, bn = t.sgn * t.pn * cfg.N;
  return (bm + bn) * (t.bk + 8) * 2 + t.sgm * t.sgn * cfg.M * cfg.N * 4 + 8;
}

export function sgmatFits(caps: Capabilities, cfg: MatrixConfig, t: SgmatTile): boolean {
  const wg = t.sgm * t.sgn * caps.subgroupMaxSize;
  return t.bk % cfg.K === 0 && wg <= caps.maxInvocations && wg <= caps.maxWorkgroupSizeX && sgmatStorageBytes(cfg, t) <= caps.maxWorkgroupStorage;
}

export function wgFits(caps: Capabilities, t: WgTile): boolean {
  const lanes = (t.bm / t.tm) * (t.bn / t.tn);
  return t.bm % t.tm === 0 && t.bn % t.tn === 0 && lanes <= caps.maxInvocations && (t.bm + t.bn) * t.bk * 4 <= caps.maxWorkgroupStorage;
}

/** The matrix config our kernels use: the largest f16→f32 one (configs are sorted largest first). */
export function matrixConfig(caps: Capabilities): MatrixConfig {
  const c = caps.matrixConfigs[0];
  if (!c) fail('gemm: the adapter reports no f16→f32 subgroup-matrix config');
  return c;
}

export function sgmatPlan(caps: Capabilities, t: SgmatTile = DEFAULT_SGMAT_TILE): GemmPlan {
  const cfg = matrixConfig(caps);
  if (!sgmatFits(caps, cfg, t))
    fail(`gemm: subgroup-matrix tile ${JSON.stringify(t)} does not fit this device (${sgmatStorageBytes(cfg, t)} bytes of workgroup storage, limit ${caps.maxWorkgroupStorage})`);
  const bm = t.sgm * t.pm * cfg.M, bn = t.sgn * t.pn * cfg.N;
  return {
    kind: 'subgroup-matrix',
    file: 'gemm-sgmat.wgsl',
    defines: { SM: cfg.M, SN: cfg.N, SK: cfg.K, SGM: t.sgm, SGN: t.sgn, PM: t.pm, PN: t.pn, BK: t.bk, SGSIZE: caps.subgroupMaxSize },
    bm,
    bn,
    ovf: true,
    describe: `subgroup-matrix ${cfg.M}x${cfg.N}x${cfg.K} f16→f32, tile ${bm}x${bn}x${t.bk}, ${t.sgm}x${t.sgn} subgroups of ${caps.subgroupMaxSize}`,
  };
}

export function wgPlan(caps: Capabilities, t: WgTile = DEFAULT_WG_TILE): GemmPlan {
  if (!wgFits(caps, t)) fail(`gemm: workgroup tile ${JSON.stringify(t)} does not fit this device`);
  return {
    kind: 'workgroup',
    file: 'gemm-wg.wgsl',
    defines: { BM: t.bm, BN: t.bn, BK: t.bk, TM: t.tm, TN: t.tn },
    bm: t.bm,
    bn: t.bn,
    ovf: false,
    describe: `workgroup-tiled f32, tile ${t.bm}x${t.bn}x${t.bk}, ${t.tm}x${t.tn} per lane`,
  };
}

/**
 * The plan for one linear/matmul shape. `variant` is linear()'s option: 'auto' follows the family
 * (and precision) of the device; 'subgroup-matrix' / 'workgroup' force that kernel; anything else
 * ('tiled', 'gemv', 'naive') is the register path.
 */
export function planGemm(g: Gpu, s: GemmShape, variant = 'auto'): GemmPlan | null {
  const caps = g.caps;
  const pick = (kind: GemmKind): GemmPlan => {
    const t = tunedFor(g)?.lookup(kind, s);
    return kind === 'subgroup-matrix' ? sgmatPlan(caps, t as SgmatTile | undefined) : wgPlan(caps, t as WgTile | undefined);
  };
  if (variant === 'subgroup-matrix' || variant === 'workgroup') return pick(variant);
  if (variant !== 'auto') return null;
  return pick2(g.kernels, g.precision, requestedKernels() !== 'auto', s, pick);
}

function pick2(family: Exclude<KernelFamily, 'auto'>, precision: Precision, forced: boolean, s: GemmShape, pick: (k: GemmKind) => GemmPlan): GemmPlan | null {
  if (family === 'register') return null;
  if (s.M <= 4 && !forced) return null;
  if (family === 'subgroup-matrix' && precision === 'mixed') return pick('subgroup-matrix');
  return pick('workgroup');
}

// ---- overflow counter ---------------------------------------------------------------------------

const counters = new WeakMap<Gpu, Tensor>();

/** The per-device u32 counter gemm-sgmat.wgsl bumps for every tile recomputed in f32. */
export function overflowCounter(g: Gpu): Tensor {
  let t = counters.get(g);
  if (!t) {
    t = g.upload(new Uint32Array(4), [4], 'u32', 'gemm overflow counter');
    counters.set(g, t);
  }
  return t;
}

/** Tiles recomputed in f32 since the device was created (waits for queued work). */
export async function overflowCount(g: Gpu): Promise<number> {
  const t = counters.get(g);
  return t ? (await g.read(t))[0] : 0;
}

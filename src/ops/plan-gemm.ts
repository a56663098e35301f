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
import { hasMatrixUnits, SUBGROUP_SIZE_CONTROL } from '../runtime/caps.js';
import { fail } from '../errors.js';
import { L2_REUSE_BYTES } from '../runtime/dryrun/traffic.js';

export type GemmKind = 'subgroup-matrix' | 'workgroup';

/**
 * gemm-sgmat.wgsl geometry: SGM x SGN subgroups, each PM x PN fragments, k-tile BK. `res` picks the
 * config's result type (default: f16→f32 where offered, else f16→f16); `flush` is the number of k-tiles
 * summed in f16 before they are added into f32 (f16 results only). `adirect: false` keeps A staged even
 * where its layout allows loading it straight from storage (a `step1x tune` candidate; see sgmatDirect).
 */
export interface SgmatTile {
  sgm: number;
  sgn: number;
  pm: number;
  pn: number;
  bk: number;
  res?: 'f32' | 'f16';
  flush?: number;
  adirect?: false;
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
  /** Row blocks per tile group (gemm-sgmat's L2-friendly tile order; 1 = row-major walk). */
  groupM: number;
  /** Binds the overflow counter (subgroup-matrix only). */
  ovf: boolean;
  /**
   * (subgroup-matrix, f16 x) A may be loaded straight from storage (gemm-sgmat ADIRECT) in chunks whose
   * layout allows it (sgmatDirect): the epilogue rounds that tile needs then, and the fragment shape.
   */
  direct?: { er: number; sm: number; sk: number };
  /** One line for `step1x devices` and the bench. */
  describe: string;
}

export interface GemmShape {
  M: number;
  N: number;
  K: number;
  wdt: DType;
  /** x storage (f16 activation storage, src/ops/act-dtype.ts); f32 when unset. */
  xdt?: DType;
}

/** CPU adapters (lavapipe): a small tile, its matrix "units" are emulated per lane. */
export const DEFAULT_SGMAT_TILE: SgmatTile = { sgm: 2, sgn: 2, pm: 2, pn: 2, bk: 32 };
export const DEFAULT_WG_TILE: WgTile = { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
/** Row blocks per tile group at most (groupRows picks fewer where a group's rows of x would not stay in L2). */
export const GROUP_M = 16;

/**
 * Row blocks per tile group for a shape: as many as keep the group's slab of x (G·bm rows × K) within
 * L2_REUSE_BYTES, so it stays in L2 while the group walks the weight columns, at least 1 and at most
 * GROUP_M. Each group streams the weight once, so larger groups save weight reads; a slab that does not
 * fit is re-read once per column block (K = 15360 f32 at G = 8: 63 MB, re-read 24 times for N = 3072).
 * The dry run's traffic model (runtime/dryrun/traffic.ts) uses the same bound.
 */
export function groupRows(bm: number, K: number, xBytes: number): number {
  return Math.max(1, Math.min(GROUP_M, Math.floor(L2_REUSE_BYTES / (bm * K * xBytes))));
}
/** K summed in f16 before it is added into f32 on f16→f16 configs (error ~ FLUSH_K * 2^-11 of sum|x w|). */
export const FLUSH_K = 64;

/** Tile overrides chosen by the autotuner (set per Gpu by src/ops/tune.ts). */
export interface TunedTiles {
  lookup(kind: GemmKind, s: GemmShape): SgmatTile | WgTile | undefined;
}
const tuned = new WeakMap<Gpu, TunedTiles>();
const loaded = new WeakSet<Gpu>();
export function setTunedTiles(g: Gpu, t: TunedTiles | undefined): void {
  loaded.add(g);
  if (t) tuned.set(g, t);
  else tuned.delete(g);
}
/** The device's tuned tiles: installed on the first plan by the loader the run passed (Gpu.create `tiles`). */
function tunedFor(g: Gpu): TunedTiles | undefined {
  if (!loaded.has(g)) {
    loaded.add(g);
    g.tiles?.(g);
  }
  return tuned.get(g);
}

// ---- configs and subgroup sizes ----------------------------------------------------------------------

/**
 * The config a GEMM tile uses: f16→f32 where offered (Vulkan: NVIDIA, AMD, Intel, lavapipe), else
 * f16→f16 (Metal reports only f16→f16 and f32→f32); `res` forces one.
 */
export function gemmConfig(caps: Capabilities, res?: 'f32' | 'f16'): MatrixConfig | null {
  if (res === 'f16') return caps.f16ResultConfigs[0] ?? null;
  if (res === 'f32') return caps.matrixConfigs[0] ?? null;
  return caps.matrixConfigs[0] ?? caps.f16ResultConfigs[0] ?? null;
}

/** The f16→f32 config (attention's kernels need f32 results). */
export function matrixConfig(caps: Capabilities): MatrixConfig {
  const c = caps.matrixConfigs[0];
  if (!c) fail('gemm: the adapter reports no f16→f32 subgroup-matrix config');
  return c;
}

export interface SubgroupChoice {
  /** Lanes per subgroup the workgroup is sized for. */
  size: number;
  /** Pinned with @subgroup_size (subgroup-size-control); otherwise the adapter's maximum. */
  pinned: boolean;
}

/**
 * The subgroup size the matrix configs need: Intel's 8x16x16 configs run on SIMD16, NVIDIA and Apple have
 * 32 lanes only, AMD RDNA3 reports 32–64 and its 16x16x16 configs need wave32. With subgroup-size-control
 * that size is pinned; without it the workgroup is sized by the maximum (a smaller real subgroup only
 * leaves extra subgroups that help staging, a larger one could not be handled).
 */
export function sgmatSubgroup(caps: Capabilities): SubgroupChoice {
  const { subgroupMinSize: lo, subgroupMaxSize: hi } = caps;
  const ctl = caps.features.has(SUBGROUP_SIZE_CONTROL);
  if (lo === hi) return { size: hi, pinned: ctl };
  const v = caps.vendor.toLowerCase();
  const want = v.includes('intel') ? 16 : /nvidia|apple|amd|ati/.test(v) ? 32 : hi;
  if (ctl && want >= lo && want <= hi) return { size: want, pinned: true };
  return { size: hi, pinned: false };
}

// ---- subgroup-matrix tiles -----------------------------------------------------------------------------

const resBytes = (cfg: MatrixConfig): number => (cfg.result === 'f16' ? 2 : 4);

/**
 * Workgroup storage of a tile: two A (not when A is read from storage, `direct`) and two B k-tiles in f16,
 * the epilogue scratch, two flag words.
 */
export function sgmatStorageBytes(cfg: MatrixConfig, t: SgmatTile, er = 1, direct = false): number {
  const bm = t.sgm * t.pm * cfg.M, bn = t.sgn * t.pn * cfg.N;
  return 2 * ((direct ? 0 : bm) + bn) * (t.bk + 8) * 2 + Math.ceil((t.sgm * t.sgn) / er) * cfg.M * cfg.N * resBytes(cfg) + 8;
}

/** Epilogue rounds that make the tile fit (f32 results only; f16 results need one slot per subgroup), or 0. */
export function sgmatRounds(caps: Capabilities, cfg: MatrixConfig, t: SgmatTile, direct = false): number {
  for (const er of cfg.result === 'f16' ? [1] : [1, 2, 4]) if (sgmatStorageBytes(cfg, t, er, direct) <= caps.maxWorkgroupStorage) return er;
  return 0;
}

export function sgmatFits(caps: Capabilities, cfg: MatrixConfig, t: SgmatTile): boolean {
  const wg = t.sgm * t.sgn * sgmatSubgroup(caps).size;
  return t.bk % cfg.K === 0 && t.bk % 8 === 0 && wg <= caps.maxInvocations && wg <= caps.maxWorkgroupSizeX && sgmatRounds(caps, cfg, t) > 0;
}

/** A tile of bm x bn outputs on sgm x sgn subgroups for this config (null when the fragments do not divide it). */
export function sgmatTileOf(cfg: MatrixConfig, bm: number, bn: number, sgm: number, sgn: number, bk: number): SgmatTile | null {
  const pm = bm / (sgm * cfg.M), pn = bn / (sgn * cfg.N);
  return Number.isInteger(pm) && Number.isInteger(pn) && pm >= 1 && pn >= 1 ? { sgm, sgn, pm, pn, bk: Math.max(bk, cfg.K) } : null;
}

/**
 * Default tiles, best first: on GPUs 128x128 (2x4 subgroups, as ggml-webgpu and ONNX Runtime use), with
 * a 32-deep k-tile where it fits and 16 otherwise, then 128x64 and 64x64 for small workgroup memory;
 * on CPU adapters the small tile of DEFAULT_SGMAT_TILE.
 */
export function defaultSgmatTiles(caps: Capabilities, cfg: MatrixConfig): SgmatTile[] {
  const list = caps.cpu
    ? [DEFAULT_SGMAT_TILE, sgmatTileOf(cfg, 2 * cfg.M, 2 * cfg.N, 2, 2, 16)]
    : [sgmatTileOf(cfg, 128, 128, 2, 4, 32), sgmatTileOf(cfg, 128, 128, 2, 4, 16), sgmatTileOf(cfg, 128, 64, 2, 2, 32), sgmatTileOf(cfg, 64, 64, 2, 2, 32), sgmatTileOf(cfg, 64, 64, 2, 2, 16)];
  return list.filter((t): t is SgmatTile => !!t && sgmatFits(caps, cfg, t));
}

/**
 * Whether a shape lets gemm-sgmat read A straight from storage (ADIRECT): x stored f16 (the fragments are
 * loaded as they are, no narrowing), K a multiple of 8 and of SK (16-byte aligned row starts, Vulkan's rule for
 * cooperative-matrix loads; fragments wholly inside or outside a row) and at least SM rows (the last row
 * block's fragments are moved up to end at row M instead of reading past x). The per-chunk x offset is
 * checked by sgmatDirect.
 */
function directAllowed(cfg: MatrixConfig, tile: SgmatTile, s?: GemmShape): boolean {
  return !!s && s.xdt === 'f16' && tile.adirect !== false && s.K % 8 === 0 && s.K % cfg.K === 0 && s.M >= cfg.M;
}

/**
 * The ADIRECT defines for one chunk of a plan (null: stage A as before): the chunk's x element offset must
 * keep row starts 16-byte aligned and the chunk must have SM rows. Why it pays: A is no longer copied
 * through workgroup memory (the staging loop, its f16 narrow and half the workgroup stores per k-tile go),
 * and the tile's workgroup storage drops by the two A buffers (a 128x128x32 tile on 16x16 fragments: 44 KiB
 * in two epilogue rounds → 28 KiB in one, more workgroups resident per SM). The cost: each of the SGN subgroups of a
 * row loads the same A fragments, served by L1 (ONNX Runtime's subgroup_matrix_matmul_nbits does the same).
 */
export function sgmatDirect(plan: GemmPlan, K: number, xOff: number, rows: number): { ADIRECT: true; ER: number } | null {
  const d = plan.direct;
  return d && K % 8 === 0 && K % d.sk === 0 && xOff % 8 === 0 && rows >= d.sm ? { ADIRECT: true, ER: d.er } : null;
}

/** The subgroup-matrix plan of a tile (default: the device's first default tile); `s`: the shape, for ADIRECT. */
export function sgmatPlan(caps: Capabilities, t?: SgmatTile, s?: GemmShape): GemmPlan {
  const cfg = gemmConfig(caps, t?.res);
  if (!cfg) fail(`gemm: the adapter reports no ${t?.res ? `f16→${t.res}` : 'f16-operand'} subgroup-matrix config (it reports: ${caps.allMatrixConfigs.map((c) => `${c.component}→${c.result} ${c.M}x${c.N}x${c.K}`).join(', ') || 'none'})`);
  const tile = t ?? defaultSgmatTiles(caps, cfg)[0];
  if (!tile) fail(`gemm: no subgroup-matrix tile for the ${cfg.M}x${cfg.N}x${cfg.K} config fits ${caps.maxWorkgroupStorage} bytes of workgroup storage`);
  if (!sgmatFits(caps, cfg, tile))
    fail(`gemm: subgroup-matrix tile ${JSON.stringify(tile)} does not fit this device (${sgmatStorageBytes(cfg, tile)} bytes of workgroup storage, limit ${caps.maxWorkgroupStorage})`);
  const sgc = sgmatSubgroup(caps);
  const er = sgmatRounds(caps, cfg, tile);
  const bm = tile.sgm * tile.pm * cfg.M, bn = tile.sgn * tile.pn * cfg.N;
  const f16 = cfg.result === 'f16';
  const flush = tile.flush ?? Math.max(1, Math.floor(FLUSH_K / tile.bk));
  const defines: GemmPlan['defines'] = {
    SM: cfg.M, SN: cfg.N, SK: cfg.K, RES: cfg.result, SGM: tile.sgm, SGN: tile.sgn, PM: tile.pm, PN: tile.pn, BK: tile.bk,
    SGSIZE: sgc.size, SGMIN: sgc.pinned ? sgc.size : Math.min(caps.subgroupMinSize, sgc.size), ER: er, FLUSH: f16 ? flush : 1,
  };
  if (sgc.pinned) defines.SGCTL = true;
  const direct = directAllowed(cfg, tile, s) ? { er: sgmatRounds(caps, cfg, tile, true), sm: cfg.M, sk: cfg.K } : undefined;
  return {
    kind: 'subgroup-matrix',
    file: 'gemm-sgmat.wgsl',
    defines,
    bm,
    bn,
    groupM: GROUP_M,
    ovf: true,
    direct,
    describe:
      `subgroup-matrix ${cfg.M}x${cfg.N}x${cfg.K} f16→${cfg.result}${f16 ? ` (f32 sums every ${flush * tile.bk} k)` : ''}, tile ${bm}x${bn}x${tile.bk} double-buffered, ` +
      `${tile.sgm}x${tile.sgn} subgroups of ${sgc.size}${sgc.pinned ? ' (pinned)' : ''}${direct ? ', A from storage (16-byte aligned chunks)' : ''}`,
  };
}

/** gemm-sgmat.wgsl's binding numbers after x (1) and w (2): scales (q8 / q4), bias, out, ovf. */
export function sgmatBindings(scales: boolean, bias: boolean): Record<string, number> {
  let slot = scales ? 4 : 3;
  const d: Record<string, number> = {};
  if (bias) d.B_BIAS = slot++;
  d.B_OUT = slot++;
  d.B_OVF = slot;
  return d;
}

export function wgPlan(caps: Capabilities, t: WgTile = DEFAULT_WG_TILE): GemmPlan {
  if (!wgFits(caps, t)) fail(`gemm: workgroup tile ${JSON.stringify(t)} does not fit this device`);
  return {
    kind: 'workgroup',
    file: 'gemm-wg.wgsl',
    defines: { BM: t.bm, BN: t.bn, BK: t.bk, TM: t.tm, TN: t.tn },
    bm: t.bm,
    bn: t.bn,
    groupM: 1,
    ovf: false,
    describe: `workgroup-tiled f32, tile ${t.bm}x${t.bn}x${t.bk}, ${t.tm}x${t.tn} per lane`,
  };
}

export function wgFits(caps: Capabilities, t: WgTile): boolean {
  const lanes = (t.bm / t.tm) * (t.bn / t.tn);
  return t.bm % t.tm === 0 && t.bn % t.tn === 0 && lanes <= caps.maxInvocations && (t.bm + t.bn) * t.bk * 4 <= caps.maxWorkgroupStorage;
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
    return kind === 'subgroup-matrix' ? sgmatPlan(caps, t as SgmatTile | undefined, s) : wgPlan(caps, t as WgTile | undefined);
  };
  const plan = variant === 'subgroup-matrix' || variant === 'workgroup' ? pick(variant) : variant === 'auto' ? planFor(g.kernels, g.precision, g.kernelsForced, s, pick) : null;
  if (plan?.kind === 'subgroup-matrix') plan.groupM = groupRows(plan.bm, s.K, s.xdt === 'f16' ? 2 : 4);
  return plan;
}

/** The family/precision rule of planGemm, on a capabilities object alone (plan tests, `step1x devices`). */
export function planGemmFor(caps: Capabilities, family: Exclude<KernelFamily, 'auto'>, precision: Precision, s: GemmShape, forced = false): GemmPlan | null {
  return planFor(family, precision, forced, s, (kind) => (kind === 'subgroup-matrix' ? sgmatPlan(caps, undefined, s) : wgPlan(caps)));
}

function planFor(family: Exclude<KernelFamily, 'auto'>, precision: Precision, forced: boolean, s: GemmShape, pick: (k: GemmKind) => GemmPlan): GemmPlan | null {
  if (family === 'register') return null;
  if (s.M <= 4 && !forced) return null;
  if (family === 'subgroup-matrix' && precision === 'mixed') return pick('subgroup-matrix');
  return pick('workgroup');
}

// ---- fallbacks are said once -------------------------------------------------------------------------


/**
 * One stderr line per device and op when an adapter with matrix units (not a CPU adapter) runs a main
 * shape without them, saying why (tests and benchmarks that force a family on lavapipe stay quiet).
 */
export function warnNoMatrixUnits(g: Gpu, what: string, why: string): void {
  if (g.caps.cpu || !hasMatrixUnits(g.caps) || g.kernels !== 'subgroup-matrix') return;
  const key = `no matrix units: ${what}`;
  if (g.saidOnce.has(key)) return;
  g.saidOnce.add(key);
  process.stderr.write(`step1x: warning: ${what} runs without matrix units: ${why}\n`);
}

// ---- overflow counter ---------------------------------------------------------------------------

const counters = new WeakMap<Gpu, Tensor>();

/**
 * Per-device u32 counters: [0] gemm-sgmat.wgsl tiles recomputed in f32, [1] attention-sgmat.wgsl workgroups
 * recomputed in f32, [2] values beyond the f16 range written to f16 activation storage (any kernel; the
 * step that wrote them is redone with f32 storage, src/ops/act-dtype.ts), [3] attention-sgmat.wgsl KV tiles whose O was rescaled (lazy softmax rescale).
 */
export function overflowCounter(g: Gpu): Tensor {
  let t = counters.get(g);
  if (!t) {
    // lives as long as the device: never owned by the tensor scope of the forward that first needs it
    t = g.untracked(() => g.upload(new Uint32Array(4), [4], 'u32', 'gemm overflow counter'));
    counters.set(g, t);
  }
  return t;
}

/** Tiles recomputed in f32 since the device was created (waits for queued work). */
export async function overflowCount(g: Gpu): Promise<number> {
  const t = counters.get(g);
  return t ? (await g.read(t))[0] : 0;
}

/**
 * Attention kernel plan: (lengths, head dim, capabilities, family, precision) → variant and defines.
 *
 *   subgroup-matrix  shaders/attention-sgmat.wgsl: S = QKᵀ and O += PV on the matrix units (f16 operands,
 *                    f32 accumulation), online softmax in f32, every mask of AttentionOptions, f32
 *                    recompute of a workgroup whose q/k/v leave the f16 range
 *   register         shaders/attention.wgsl (f32, tuned for lavapipe; also takes the binding-split path)
 * The subgroup-matrix family at --precision mixed uses the first; everything else the register kernel.
 * Tiles: NSG subgroups (BQ = NSG·SM query rows, up to 8 subgroups) and BKV keys per tile, the largest that
 * fit the device's workgroup storage, query rows first (each K/V tile is reused by more rows). Q and O live
 * in registers, so the storage is the f16 K/V tile (or the Q staging, if larger) and the score tile.
 * Softmax rows run on LPR = subgroup/SM lanes; their max is reduced with shuffles (SGREDUCE) or through
 * workgroup memory: on NVIDIA (driver 595.58 crashes on cooperative-matrix + subgroup arithmetic in one
 * module) and when a row's lanes could straddle an unpinned subgroup.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Capabilities, MatrixConfig } from '../runtime/caps.js';
import { matrixConfig, sgmatSubgroup, warnNoMatrixUnits } from './plan-gemm.js';
import { fail } from '../errors.js';

export interface AttentionPlan {
  kind: 'subgroup-matrix' | 'register';
  defines: Record<string, number | boolean>;
  /** Query rows per workgroup (subgroup-matrix only). */
  bq: number;
  describe: string;
  /** Set when a subgroup-matrix request fell back to the register kernel: why. */
  why?: string;
}

export interface AttentionShape {
  Lq: number;
  Lk: number;
  Dh: number;
}

const lcm = (a: number, b: number): number => {
  const gcd = (x: number, y: number): number => (y ? gcd(y, x % y) : x);
  return (a / gcd(a, b)) * b;
};

/** Workgroup bytes of attention-sgmat.wgsl (its header lists the arrays). */
export function attentionSgmatBytes(cfg: MatrixConfig, nsg: number, bkv: number, dhp: number, lpr = 1): number {
  const bq = nsg * cfg.M;
  return Math.max(bq, 2 * bkv) * dhp * 2 + bq * bkv * 6 + bq * lpr * 12 + bq * 4 + 16 + 8 * 16; // + alignment of 8 arrays
}

export interface AttentionTile {
  nsg: number;
  bkv: number;
  dhp: number;
}

/** The subgroup-matrix tiling for head dim `dh`, or null when none fits the device. */
export function attentionSgmatTile(caps: Capabilities, dh: number, lanesPerRow?: number): AttentionTile | null {
  const cfg = matrixConfig(caps);
  const sg = sgmatSubgroup(caps).size;
  const step = lcm(cfg.K, cfg.N);
  const dhp = Math.ceil(dh / step) * step;
  const lpr = lanesPerRow ?? Math.max(1, sg / cfg.M);
  for (const nsg of [8, 4, 2, 1]) {
    if (nsg * sg > caps.maxInvocations || nsg * sg > caps.maxWorkgroupSizeX) continue;
    for (const mult of [8, 4, 2, 1]) {
      const bkv = step * mult;
      if (bkv > 64) continue;
      if (attentionSgmatBytes(cfg, nsg, bkv, dhp, lpr) <= caps.maxWorkgroupStorage) return { nsg, bkv, dhp };
    }
  }
  return null;
}

/** Overrides for tests: the row-max reduction and lanes per softmax row. */
export interface AttentionForce {
  reduce?: 'subgroup' | 'workgroup';
  lanesPerRow?: number;
}

export function planAttention(g: Gpu, s: AttentionShape, variant: 'auto' | 'subgroup-matrix' | 'register' = 'auto', force: AttentionForce = {}): AttentionPlan {
  const want = variant === 'auto' ? (g.kernels === 'subgroup-matrix' && g.precision === 'mixed' ? 'subgroup-matrix' : 'register') : variant;
  const plan = planAttentionFor(g.caps, s, want, force);
  if (plan.why) {
    if (variant === 'subgroup-matrix') fail(`attention: ${plan.why}`);
    warnNoMatrixUnits(g, `attention (Dh ${s.Dh})`, plan.why);
  }
  return plan;
}

/** The plan on a capabilities object alone; `why` says why a subgroup-matrix request got the register kernel. */
export function planAttentionFor(caps: Capabilities, s: AttentionShape, want: 'subgroup-matrix' | 'register', force: AttentionForce = {}): AttentionPlan {
  const register: AttentionPlan = { kind: 'register', defines: {}, bq: 0, describe: 'register-tiled f32 flash attention (attention.wgsl)' };
  if (want === 'register') return register;
  if (!caps.matrixConfigs.length)
    return { ...register, why: `attention-sgmat.wgsl needs an f16→f32 config, the adapter reports ${caps.allMatrixConfigs.map((c) => `${c.component}→${c.result} ${c.M}x${c.N}x${c.K}`).join(', ') || 'none'}` };
  const t = attentionSgmatTile(caps, s.Dh, force.lanesPerRow);
  if (!t) return { ...register, why: `no subgroup-matrix tiling of head dim ${s.Dh} fits ${caps.maxWorkgroupStorage} bytes of workgroup storage` };
  const cfg = matrixConfig(caps);
  const sgc = sgmatSubgroup(caps);
  const lpr = force.lanesPerRow ?? Math.max(1, sgc.size / cfg.M); // as attentionSgmatTile
  // Shuffles need a row's lanes in one subgroup: the pinned size, or the smallest the adapter may pick.
  // NVIDIA driver 595.58 crashes on a module mixing cooperative-matrix ops with subgroup arithmetic, so
  // NVIDIA adapters reduce through workgroup memory.
  const shuffles = lpr === 1 || lpr <= (sgc.pinned ? sgc.size : caps.subgroupMinSize);
  const reduce = force.reduce ?? (shuffles && !/nvidia/i.test(caps.vendor) ? 'subgroup' : 'workgroup');
  if (reduce === 'subgroup' && !shuffles) fail(`attention: ${lpr} lanes per row cannot share a subgroup of ${caps.subgroupMinSize}`);
  const defines: Record<string, number | boolean> = {
    SM: cfg.M, SN: cfg.N, SK: cfg.K, NSG: t.nsg, SGSIZE: sgc.size, BKV: t.bkv, DH: s.Dh, DHP: t.dhp, LPR: lpr,
  };
  if (sgc.pinned) defines.SGCTL = true;
  if (s.Dh % 4 === 0) defines.VEC4 = true;
  if (reduce === 'subgroup') defines.SGREDUCE = true;
  return {
    kind: 'subgroup-matrix',
    defines,
    bq: t.nsg * cfg.M,
    describe:
      `subgroup-matrix flash attention ${cfg.M}x${cfg.N}x${cfg.K} f16→f32, ${t.nsg * cfg.M} query rows x ${t.bkv} keys per tile, ` +
      `Dh padded to ${t.dhp}, O in registers, ${lpr > 1 ? `row max over ${lpr} lanes via ${reduce === 'subgroup' ? 'shuffles' : 'workgroup memory'}` : 'one lane per row'}`,
  };
}

/**
 * How attention-sgmat binds q/k/v/out/mask under a binding limit: all at once, one batch item per
 * dispatch, or not at all (then the register kernel's row/key split runs, with a warning). Row bytes:
 * q/out H*Dh*4, k/v Hkv*Dh*4, a dense mask Lk*4 (0 without one).
 */
export function attentionBinding(limit: number, B: number, Lq: number, Lk: number, qRow: number, kRow: number, mRow: number): 'whole' | 'per-item' | null {
  if (B * Lq * Math.max(qRow, mRow) <= limit && B * Lk * kRow <= limit) return 'whole';
  if (Lq * Math.max(qRow, mRow) <= limit && Lk * kRow <= limit) return 'per-item';
  return null;
}

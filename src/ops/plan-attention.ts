/**
 * Attention kernel plan: (lengths, head dim, capabilities, family, precision) → variant and defines.
 *
 *   subgroup-matrix  shaders/attention-sgmat.wgsl: S = QKᵀ and O += PV on the matrix units (f16 operands,
 *                    f32 accumulation), online softmax in f32, every mask of AttentionOptions, f32
 *                    recompute of a workgroup whose q/k/v leave the f16 range
 *   register         shaders/attention.wgsl (f32, tuned for lavapipe; also takes the binding-split path)
 * The subgroup-matrix family at --precision mixed uses the first; everything else the register kernel.
 * Tiles: NSG subgroups (BQ = NSG·SM query rows) and BKV keys per tile, the largest that fit the device's
 * workgroup storage, query rows first (each K/V tile is reused by more rows).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { Capabilities, MatrixConfig } from '../runtime/caps.js';
import { matrixConfig, warnNoMatrixUnits } from './plan-gemm.js';
import { fail } from '../errors.js';

export interface AttentionPlan {
  kind: 'subgroup-matrix' | 'register';
  defines: Record<string, number>;
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

export function attentionSgmatBytes(cfg: MatrixConfig, nsg: number, bkv: number, dhp: number): number {
  const bq = nsg * cfg.M;
  return (bq + 2 * bkv) * dhp * 2 + bq * bkv * 6 + bq * dhp * 4 + bq * 12 + 8;
}

/** The subgroup-matrix tiling for head dim `dh`, or null when none fits the device. */
export function attentionSgmatTile(caps: Capabilities, dh: number): { nsg: number; bkv: number; dhp: number } | null {
  const cfg = matrixConfig(caps);
  const step = lcm(cfg.K, cfg.N);
  const dhp = Math.ceil(dh / step) * step;
  for (const nsg of [4, 2, 1]) {
    if (nsg * caps.subgroupMaxSize > caps.maxInvocations) continue;
    for (const mult of [8, 4, 2, 1]) {
      const bkv = step * mult;
      if (bkv > 64) continue;
      if (attentionSgmatBytes(cfg, nsg, bkv, dhp) <= caps.maxWorkgroupStorage) return { nsg, bkv, dhp };
    }
  }
  return null;
}

export function planAttention(g: Gpu, s: AttentionShape, variant: 'auto' | 'subgroup-matrix' | 'register' = 'auto'): AttentionPlan {
  const want = variant === 'auto' ? (g.kernels === 'subgroup-matrix' && g.precision === 'mixed' ? 'subgroup-matrix' : 'register') : variant;
  const plan = planAttentionFor(g.caps, s, want);
  if (plan.why) {
    if (variant === 'subgroup-matrix') fail(`attention: ${plan.why}`);
    warnNoMatrixUnits(g, `attention (Dh ${s.Dh})`, plan.why);
  }
  return plan;
}

/** The plan on a capabilities object alone; `why` says why a subgroup-matrix request got the register kernel. */
export function planAttentionFor(caps: Capabilities, s: AttentionShape, want: 'subgroup-matrix' | 'register'): AttentionPlan {
  const register: AttentionPlan = { kind: 'register', defines: {}, bq: 0, describe: 'register-tiled f32 flash attention (attention.wgsl)' };
  if (want === 'register') return register;
  if (!caps.matrixConfigs.length)
    return { ...register, why: `attention-sgmat.wgsl needs an f16→f32 config, the adapter reports ${caps.allMatrixConfigs.map((c) => `${c.component}→${c.result} ${c.M}x${c.N}x${c.K}`).join(', ') || 'none'}` };
  const t = attentionSgmatTile(caps, s.Dh);
  if (!t) return { ...register, why: `no subgroup-matrix tiling of head dim ${s.Dh} fits ${caps.maxWorkgroupStorage} bytes of workgroup storage` };
  const cfg = matrixConfig(caps);
  return {
    kind: 'subgroup-matrix',
    defines: { SM: cfg.M, SN: cfg.N, SK: cfg.K, NSG: t.nsg, SGSIZE: caps.subgroupMaxSize, BKV: t.bkv, DH: s.Dh, DHP: t.dhp },
    bq: t.nsg * cfg.M,
    describe: `subgroup-matrix flash attention ${cfg.M}x${cfg.N}x${cfg.K} f16→f32, ${t.nsg * cfg.M} query rows x ${t.bkv} keys per tile, Dh padded to ${t.dhp}`,
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

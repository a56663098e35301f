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
import { matrixConfig } from './plan-gemm.js';
import { fail } from '../errors.js';

export interface AttentionPlan {
  kind: 'subgroup-matrix' | 'register';
  defines: Record<string, number>;
  /** Query rows per workgroup (subgroup-matrix only). */
  bq: number;
  describe: string;
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
  const register: AttentionPlan = { kind: 'register', defines: {}, bq: 0, describe: 'register-tiled f32 flash attention (attention.wgsl)' };
  const want = variant === 'auto' ? (g.kernels === 'subgroup-matrix' && g.precision === 'mixed' ? 'subgroup-matrix' : 'register') : variant;
  if (want === 'register') return register;
  const caps = g.caps;
  const t = attentionSgmatTile(caps, s.Dh);
  if (!t) {
    if (variant === 'subgroup-matrix') fail(`attention: no subgroup-matrix tiling of head dim ${s.Dh} fits ${caps.maxWorkgroupStorage} bytes of workgroup storage`);
    return register;
  }
  const cfg = matrixConfig(caps);
  return {
    kind: 'subgroup-matrix',
    defines: { SM: cfg.M, SN: cfg.N, SK: cfg.K, NSG: t.nsg, SGSIZE: caps.subgroupMaxSize, BKV: t.bkv, DH: s.Dh, DHP: t.dhp },
    bq: t.nsg * cfg.M,
    describe: `subgroup-matrix flash attention ${cfg.M}x${cfg.N}x${cfg.K} f16→f32, ${t.nsg * cfg.M} query rows x ${t.bkv} keys per tile, Dh padded to ${t.dhp}`,
  };
}

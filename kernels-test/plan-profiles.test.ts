/**
 * Kernel plans per device profile (kernels-test/device-profiles.ts), no GPU needed: the variant, tile and
 * subgroup size every main shape gets at 1024² (CFG batch 2), and that nothing falls back silently.
 * Measured speed lives in `npm run bench`; these are the structural promises of the plans.
 */
import { PROFILES, byName, type DeviceProfile } from './device-profiles.js';
import { planGemmFor, sgmatPlan, sgmatStorageBytes, sgmatDirect, gemmConfig, matrixConfig, type GemmPlan, type GemmShape, type SgmatTile } from '../src/ops/plan-gemm.js';
import { planAttentionFor, attentionBinding, attentionSgmatTile, attentionSgmatBytes } from '../src/ops/plan-attention.js';
import { resolveKernels, resolvePrecision, hasMatrixUnits } from '../src/runtime/caps.js';
import { planConvFor, convWeightVectors, type ConvShape } from '../src/ops/plan-conv.js';

const TOKENS = 2 * 4096 + 640; // one image's noise + reference tokens and the text at 1024²
const M = 2 * TOKENS;
const DIT: GemmShape[] = [[3072, 9216], [3072, 12288], [3072, 21504], [3072, 3072], [12288, 3072], [15360, 3072]].map(([K, N]) => ({ M, K, N, wdt: 'bf16' }));
const QWEN: GemmShape[] = [[3584, 18944], [18944, 3584], [3584, 4608]].map(([K, N]) => ({ M: 1024, K, N, wdt: 'bf16' }));
const VAE_ATTN: GemmShape = { M: 128 * 128, K: 512, N: 512, wdt: 'f32' };
/**
 * The VAE's convs at 1024² (FLUX AE, ch 128, ch_mult 1,2,4,4; decoder from the 128² latent, encoder of the
 * 1024² reference image): [what, C, O, kernel, output side, input side (stride 2 / fused upsample)].
 */
const VAE_CONVS: [string, number, number, number, number][] = [
  ['dec.conv_in 16→512', 16, 512, 3, 128], ['dec 512→512 at 128²', 512, 512, 3, 128], ['dec.attn q/k/v 1x1', 512, 512, 1, 128],
  ['dec up 512→512 at 256²', 512, 512, 3, 256], ['dec 512→256 at 512²', 512, 256, 3, 512], ['dec nin 1x1 512→256', 512, 256, 1, 512],
  ['dec 256→256 at 512²', 256, 256, 3, 512], ['dec 256→128 at 1024²', 256, 128, 3, 1024], ['dec 128→128 at 1024²', 128, 128, 3, 1024],
  ['dec.conv_out 128→3', 128, 3, 3, 1024], ['enc.conv_in 3→128', 3, 128, 3, 1024], ['enc downsample 128→128 s2', 128, 128, 3, 512],
];
const VAE_SHAPES: (ConvShape & { what: string })[] = VAE_CONVS.map(([what, C, O, k, side]) => ({ what, C, O, KH: k, KW: k, Ho: side, Wo: side, wdt: 'f32' }));
const ATTN = [{ what: 'DiT', Lq: TOKENS, Lk: TOKENS, Dh: 128, H: 24 }, { what: 'Qwen text', Lq: 1024, Lk: 1024, Dh: 128, H: 28 }, { what: 'Qwen vision', Lq: 4096, Lk: 4096, Dh: 80, H: 16 }];

function gemmPlans(p: DeviceProfile): GemmPlan[] {
  const family = resolveKernels(p.caps, 'auto');
  const precision = resolvePrecision(family, undefined);
  return [...DIT, ...QWEN, VAE_ATTN].map((s) => {
    const plan = planGemmFor(p.caps, family, precision, s);
    if (!plan) throw new Error(`${p.name}: GEMM M=${s.M} K=${s.K} N=${s.N} has no plan (register path) under family ${family}`);
    return plan;
  });
}

describe('plans per device profile at 1024²', () => {
  test.each(PROFILES.filter((p) => !p.caps.cpu).map((p) => [p.name, p] as const))('%s: every main GEMM on matrix units, tiles fit', (_n, p) => {
    expect(hasMatrixUnits(p.caps)).toBe(true);
    expect(resolveKernels(p.caps, 'auto')).toBe('subgroup-matrix');
    for (const plan of gemmPlans(p)) {
      expect(plan.kind).toBe('subgroup-matrix');
      const cfg = gemmConfig(p.caps)!;
      const d = plan.defines as Record<string, number>;
      expect(sgmatStorageBytes(cfg, { sgm: d.SGM, sgn: d.SGN, pm: d.PM, pn: d.PN, bk: d.BK }, d.ER)).toBeLessThanOrEqual(p.caps.maxWorkgroupStorage);
      expect((d.SGM * d.SGN * d.SGSIZE) % d.SGSIZE).toBe(0);
      expect(d.SGM * d.SGN * d.SGSIZE).toBeLessThanOrEqual(p.caps.maxInvocations);
    }
  });

  test('H100 and RTX 4090: 128x128 GEMM tiles on 16x16x16 f16→f32, subgroups pinned at 32', () => {
    for (const name of ['H100', 'RTX 4090']) {
      for (const plan of gemmPlans(byName(name))) {
        expect(plan.bm).toBeGreaterThanOrEqual(128);
        expect(plan.bn).toBeGreaterThanOrEqual(128);
        expect(plan.defines).toMatchObject({ SM: 16, SN: 16, SK: 16, RES: 'f32', SGSIZE: 32, SGCTL: true });
      }
      // Quantized weights (fp8 / q8 / q4): linearPacked takes the plan of the f32-weight shape and runs it
      // as gemm-sgmat with QUANT, so the DiT's quantized GEMMs get the same 128x128 tiles.
      const p = byName(name);
      for (const s of DIT) {
        const q = planGemmFor(p.caps, 'subgroup-matrix', 'mixed', { ...s, wdt: 'f32' })!;
        expect([q.kind, q.bm, q.bn]).toEqual(['subgroup-matrix', 128, 128]);
      }
      // f16 activations (DiT steps): A is loaded straight from storage (ADIRECT), bf16 and quantized alike;
      // without the A tiles the 128x128x32 tile needs one epilogue round instead of two
      for (const s of DIT)
        for (const wdt of ['bf16', 'f32'] as const) {
          const d = planGemmFor(p.caps, 'subgroup-matrix', 'mixed', { ...s, wdt, xdt: 'f16' })!;
          expect([d.bm, d.bn, d.describe]).toEqual([128, 128, expect.stringMatching(/A from storage/)]);
          expect(sgmatDirect(d, s.K, 0, s.M)).toEqual({ ADIRECT: true, ER: 1 });
          const t = { sgm: d.defines.SGM, sgn: d.defines.SGN, pm: d.defines.PM, pn: d.defines.PN, bk: d.defines.BK } as SgmatTile;
          expect(sgmatStorageBytes(gemmConfig(p.caps)!, t, 1, true)).toBeLessThanOrEqual(p.caps.maxWorkgroupStorage);
          expect(planGemmFor(p.caps, 'subgroup-matrix', 'mixed', { ...s, wdt })!.direct).toBeUndefined(); // f32 x: staged
        }
    }
  });

  test('M2 Max (Metal): the f16→f16 8x8x8 config on matrix units, k-chunks summed into f32', () => {
    const p = byName('M2 Max');
    for (const plan of gemmPlans(p)) {
      expect(plan.defines).toMatchObject({ SM: 8, SN: 8, SK: 8, RES: 'f16', SGSIZE: 32 });
      expect(plan.bm * plan.bn).toBeGreaterThanOrEqual(64 * 64);
      expect(plan.describe).toMatch(/f32 sums every \d+ k/);
    }
    // Attention needs an f16→f32 config: the register kernel, with the reason said (not silent).
    const a = planAttentionFor(p.caps, ATTN[0], 'subgroup-matrix');
    expect(a.kind).toBe('register');
    expect(a.why).toMatch(/f16→f32/);
  });

  test('Xe2: 8x16x16 config on subgroups pinned at 16; RDNA3: wave32 pinned from 32–64', () => {
    for (const plan of gemmPlans(byName('Xe2'))) expect(plan.defines).toMatchObject({ SM: 8, SN: 16, SK: 16, SGSIZE: 16, SGCTL: true });
    for (const plan of gemmPlans(byName('RDNA3'))) expect(plan.defines).toMatchObject({ SM: 16, SN: 16, SGSIZE: 32, SGCTL: true });
    // Without subgroup-size-control the workgroup is sized by the maximum (64 on RDNA3), unpinned.
    const rd = byName('RDNA3').caps;
    const unpinned = sgmatPlan({ ...rd, features: new Set([...rd.features].filter((f) => f !== 'subgroup-size-control')) });
    expect(unpinned.defines.SGSIZE).toBe(64);
    expect(unpinned.defines.SGCTL).toBeUndefined();
  });

  test('lavapipe: auto is the register family; forced subgroup-matrix gets the small tile, pinned at 8', () => {
    const p = byName('lavapipe');
    expect(resolveKernels(p.caps, 'auto')).toBe('register');
    const plan = planGemmFor(p.caps, 'subgroup-matrix', 'mixed', DIT[0])!;
    expect(plan.defines).toMatchObject({ SM: 8, SN: 8, RES: 'f32', SGSIZE: 8, SGCTL: true });
    expect(sgmatPlan(p.caps, { sgm: 2, sgn: 2, pm: 2, pn: 2, bk: 32, res: 'f16' }).defines.RES).toBe('f16');
  });

  test.each(PROFILES.filter((p) => p.caps.matrixConfigs.length > 0).map((p) => [p.name, p] as const))('%s: attention on matrix units at every main shape, bound whole or per batch item', (_n, p) => {
    for (const s of ATTN) {
      const plan = planAttentionFor(p.caps, s, 'subgroup-matrix');
      expect(plan.why).toBeUndefined();
      expect(plan.kind).toBe('subgroup-matrix');
      expect(plan.bq).toBeGreaterThanOrEqual(32);
      const row = s.H * s.Dh * 4;
      expect(attentionBinding(p.maxBindingBytes, 2, s.Lq, s.Lk, row, row, 0)).not.toBeNull();
    }
  });

  test.each(['H100', 'RTX 4090'])('%s: attention ≥ 64 query rows per workgroup at every main shape, reduced through workgroup memory (driver 595.58)', (n) => {
    const p = byName(n);
    for (const s of ATTN) {
      const plan = planAttentionFor(p.caps, s, 'subgroup-matrix');
      expect(plan.kind).toBe('subgroup-matrix');
      expect(plan.bq).toBeGreaterThanOrEqual(64);
      expect(plan.defines).toMatchObject({ SM: 16, SGSIZE: 32, LPR: 2 });
      expect(plan.defines.SGREDUCE).toBeUndefined();
      const tile = attentionSgmatTile(p.caps, s.Dh)!;
      expect(attentionSgmatBytes(matrixConfig(p.caps), tile.nsg, tile.bkv, tile.dhp, 2)).toBeLessThanOrEqual(p.caps.maxWorkgroupStorage);
    }
  });

  test('RDNA3 and Xe2: attention reduces the row max with subgroup shuffles (lanes of a row share the pinned subgroup)', () => {
    for (const n of ['RDNA3', 'Xe2']) {
      const plan = planAttentionFor(byName(n).caps, ATTN[0], 'subgroup-matrix');
      expect(plan.defines.SGREDUCE).toBe(true);
      expect(plan.bq).toBeGreaterThanOrEqual(64);
    }
  });

  test.each(PROFILES.map((p) => [p.name, p] as const))('%s: VAE convs at 1024² — implicit GEMM on matrix units on GPUs, the direct f32 kernel on CPU adapters', (_n, p) => {
    const family = resolveKernels(p.caps, 'auto');
    for (const s of VAE_SHAPES) {
      const plan = planConvFor(p.caps, family, resolvePrecision(family, undefined), s);
      expect([s.what, plan.kind]).toEqual([s.what, p.caps.cpu ? 'direct' : 'subgroup-matrix']);
      // conv.ts splits by whole input / output planes: one plane (and one weight row) must fit one binding
      expect(4 * Math.max(s.Ho * s.Wo * (s.what.includes('s2') ? 4 : 1), s.C * s.KH * s.KW)).toBeLessThan(p.maxBindingBytes);
      if (plan.kind === 'direct') continue;
      const d = plan.gemm!.defines;
      if (/^(H100|RTX 4090)/.test(p.name)) {
        expect(d).toMatchObject({ SM: 16, SN: 16, SK: 16, RES: 'f32', SGSIZE: 32, SGCTL: true });
        expect([plan.gemm!.bm, plan.gemm!.bn]).toEqual([128, 128]);
      }
      if (p.name.startsWith('M2 Max')) expect(d).toMatchObject({ SM: 8, SN: 8, SK: 8, RES: 'f16', SGSIZE: 32 });
      if (p.name.startsWith('Xe2')) expect(d).toMatchObject({ SM: 8, SN: 16, SK: 16, SGSIZE: 16, SGCTL: true });
      if (p.name.startsWith('RDNA3')) expect(d).toMatchObject({ SM: 16, SGSIZE: 32, SGCTL: true });
    }
    // --precision f32 keeps the direct f32 kernel on every device
    expect(planConvFor(p.caps, family, 'f32', VAE_SHAPES[1]).kind).toBe('direct');
  });

  test('VAE convs stage their weights with vector loads, all but the RGB conv_in (27 taps per row)', () => {
    for (const s of VAE_SHAPES) {
      const K = s.C * s.KH * s.KW; // one channel block: the whole row from w_off 0
      for (const wdt of ['f32', 'bf16'] as const) expect([s.what, wdt, convWeightVectors(wdt, K, 0, K)]).toEqual([s.what, wdt, s.C !== 3]);
    }
    // a block starting mid-row keeps vectors only when its first tap does
    expect(convWeightVectors('bf16', 8 * 9, 3 * 9, 512 * 9)).toBe(false);
    expect(convWeightVectors('bf16', 8 * 9, 8 * 9, 512 * 9)).toBe(true);
  });

  test('f32→f32 configs: recorded where offered (Metal), used by no plan; lavapipe offers none to test one on', () => {
    const m2 = byName('M2 Max').caps;
    expect(m2.f32Configs.map((c) => [c.M, c.N, c.K])).toEqual([[8, 8, 8]]);
    // mixed: the f16→f16 config (above); --precision f32: the workgroup-tiled f32 GEMM, the direct f32 conv
    expect(planGemmFor(m2, 'subgroup-matrix', 'f32', DIT[0])!.kind).toBe('workgroup');
    expect(planConvFor(m2, 'subgroup-matrix', 'f32', VAE_SHAPES[1]).kind).toBe('direct');
    for (const p of PROFILES.filter((q) => !q.name.startsWith('M2 Max'))) expect([p.name, p.caps.f32Configs]).toEqual([p.name, []]);
  });

  test('a 128 MiB binding limit: DiT attention at 1024² runs one batch item per dispatch (q is 217 MB)', () => {
    const row = 24 * 128 * 4;
    expect(2 * TOKENS * row).toBeGreaterThan(2 ** 27);
    expect(attentionBinding(2 ** 27, 2, TOKENS, TOKENS, row, row, 0)).toBe('per-item');
  });
});

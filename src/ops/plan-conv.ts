/**
 * Conv kernel plan: (conv shape, weight dtype, capabilities, family, precision) → variant and tile.
 *
 *   subgroup-matrix  implicit GEMM on matrix units: shaders/gemm-sgmat.wgsl with CONV (A gathered from the
 *                    input while staged, common/conv-gather.wgsl), M = Ho*Wo output pixels of one batch item,
 *                    N = output channels, K = C*KH*KW. The tile, config (f16→f32, or Metal's f16→f16 with f32
 *                    k-chunk sums) and pinned subgroup size are the GEMM plan's for that (M, N, K), so the
 *                    autotune cache, Intel's subgroup-16 and AMD's wave32 choices carry over unchanged.
 *   direct           shaders/conv2d.wgsl, f32 register tiles: CPU adapters under auto, --precision f32, the
 *                    register / tiled families, and shapes the GEMM plan leaves to its register path (M <= 4).
 * The op (src/ops/conv.ts) splits both alike under the binding limit (input / output channel blocks).
 */
import type { Gpu } from '../runtime/gpu.js';
import type { DType } from '../runtime/tensor.js';
import type { Capabilities, KernelFamily, Precision } from '../runtime/caps.js';
import { planGemm, planGemmFor, sgmatPlan, type GemmPlan, type GemmShape, type SgmatTile } from './plan-gemm.js';

export type ConvVariant = 'auto' | 'direct' | 'subgroup-matrix';

export interface ConvShape {
  /** Input / output channels, kernel size. */
  C: number;
  O: number;
  KH: number;
  KW: number;
  /** Output size (per batch item). */
  Ho: number;
  Wo: number;
  wdt: DType;
}

export interface ConvPlan {
  kind: 'subgroup-matrix' | 'direct';
  /** The GEMM plan the implicit GEMM runs (subgroup-matrix only). */
  gemm: GemmPlan | null;
  /** One line for the bench and `step1x devices`. */
  describe: string;
}

/** The GEMM an implicit-GEMM conv of this shape is. */
export function convGemmShape(s: ConvShape): GemmShape {
  return { M: s.Ho * s.Wo, N: s.O, K: s.C * s.KH * s.KW, wdt: s.wdt };
}

const DIRECT: ConvPlan = { kind: 'direct', gemm: null, describe: 'direct conv2d.wgsl, f32 register tiles (4 pixels x 4|8 channels per lane)' };

function of(gemm: GemmPlan | null): ConvPlan {
  if (gemm?.kind !== 'subgroup-matrix') return DIRECT;
  return { kind: 'subgroup-matrix', gemm, describe: `implicit GEMM, ${gemm.describe}` };
}

/**
 * The plan for one conv on device g. `variant` 'auto' follows the device's family and precision (as
 * linear's GEMMs do); 'subgroup-matrix' forces the implicit GEMM (tests; an adapter without matrix units
 * fails in the plan with the reason), 'direct' the register kernel. `tile` forces a GEMM tile (tests).
 */
export function planConv(g: Gpu, s: ConvShape, variant: ConvVariant = 'auto', tile?: SgmatTile): ConvPlan {
  if (variant === 'direct') return DIRECT;
  if (tile) return of(sgmatPlan(g.caps, tile));
  return of(planGemm(g, convGemmShape(s), variant));
}

/** planConv's rule on a capabilities object alone (plan tests; the dry run runs the real planConv). */
export function planConvFor(caps: Capabilities, family: Exclude<KernelFamily, 'auto'>, precision: Precision, s: ConvShape): ConvPlan {
  return of(planGemmFor(caps, family, precision, convGemmShape(s)));
}

/**
 * Whether the implicit GEMM stages the weight with vector loads (gemm-sgmat WVEC: 4 f32 or 8 packed bf16/f16
 * per load): the chunk's K = channels·KH·KW, its first element wOff and the row stride ldw = C·KH·KW all fall
 * on vectors. The VAE's 3x3 convs over multiples of 8 channels and its 1x1 convs do; RGB conv_in (27 taps) not.
 */
export function convWeightVectors(wdt: DType, K: number, wOff: number, ldw: number): boolean {
  const v = wdt === 'f32' ? 4 : 8;
  return K % v === 0 && wOff % v === 0 && ldw % v === 0;
}

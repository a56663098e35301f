/**
 * The uniform blocks of the GEMM family (runtime/uniforms.ts): gemm.wgsl, gemm-wg.wgsl, gemm-sgmat.wgsl
 * (plain, and with the implicit-GEMM conv's CONV members) and gemm-quant.wgsl. linear(), linearPacked(),
 * matmul() and the conv's implicit GEMM dispatch them; test/uniform-structs.test.ts checks them against
 * the shaders' `struct Params`.
 */
import { fail } from '../errors.js';
import { uniformStruct, type UniformValues, type Uniforms } from '../runtime/uniforms.js';

/** Shape, element offsets of x / w / bias / out inside their bound windows, out row stride, grid. */
const CORE = ['M', 'N', 'K', 'K4', 'x_off', 'w_off', 'b_off', 'o_off', 'ldo', 'tiles_n', 'wg_x'] as const;
/** gemm.wgsl / gemm-wg.wgsl: per-batch element strides of matmul()'s 3-D grid (0 for linear). */
const BATCHED = [...CORE, '_pad', 'xbs?', 'wbs?', 'obs?', '_pad2'] as const;
/** gemm-sgmat.wgsl: the grouped tile walk, and the QUANT weight's scales offset and row layout. */
const SGMAT = [...CORE, 'group_m', 's_off?', 'row_words?', 'nb?', '_pad2'] as const;

export const GEMM = uniformStruct('gemm.wgsl', BATCHED);
export const GEMM_WG = uniformStruct('gemm-wg.wgsl', BATCHED);
export const GEMM_SGMAT = uniformStruct('gemm-sgmat.wgsl', SGMAT, { CONV: false });
/** The conv's shape follows the GEMM's (same names as conv2d.wgsl's members; ldw: w's row stride). */
export const GEMM_SGMAT_CONV = uniformStruct(
  'gemm-sgmat.wgsl',
  [...SGMAT, 'H', 'W', 'CT', 'Ho', 'Wo', 'O_all', 'KH', 'KW', 'stride', 'ups', 'padT', 'padL', 'xs_c', 'xs_y', 'xs_x', 'os_o', 'os_m',
    'r_off', 'accum', 'fin', 'ldw', '_c0', '_c1', '_c2'],
  { CONV: true },
);
export const GEMM_QUANT = uniformStruct('gemm-quant.wgsl', [
  'M', 'N', 'K', 'K4', 'x_off', 'w_off', 's_off', 'b_off', 'o_off', 'ldo', 'tiles_n', 'wg_x', 'row_words', 'nb', '_pad0', '_pad1',
]);

type Batched = (typeof BATCHED)[number];
type Sgmat = (typeof SGMAT)[number];

/** The block of whichever of gemm.wgsl / gemm-wg.wgsl / gemm-sgmat.wgsl a plan picked (members it lacks are dropped). */
export function gemmUniforms(file: string, v: UniformValues<Batched> & UniformValues<Sgmat>): Uniforms {
  const s = file === 'gemm-sgmat.wgsl' ? GEMM_SGMAT : file === 'gemm-wg.wgsl' ? GEMM_WG : file === 'gemm.wgsl' ? GEMM : fail(`gemmUniforms: ${file} is not a GEMM kernel`);
  return s(v);
}

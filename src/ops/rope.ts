/**
 * Rotary position embeddings (shaders/rope.wgsl) on token-major heads x [B, L, H, Dh], f32.
 *   applyRopeFlux: FLUX `apply_rope` with pe [B|1, L, Dh/2, 2, 2] (rows [[cos, -sin], [sin, cos]]).
 *   applyRopeHalf: transformers' rotate_half form `x*cos + rotate_half(x)*sin`, cos/sin [B|1, L, Dh]
 *                  (Qwen2.5 M-RoPE, Qwen2.5-VL vision 2-D RoPE).
 * Host-side tables: src/ops/rope-tables.ts. Tensors over g.maxBindingBytes are processed in token chunks.
 */
import type { Tensor } from '../runtime/tensor.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32 } from './util.js';
import { outputDtype } from './act-dtype.js';
import { overflowCounter } from './plan-gemm.js';
import { uniformStruct } from '../runtime/uniforms.js';

type Op = 'flux' | 'half';

/** n rotation pairs of l tokens x h heads; table rows of tbl_row floats, tbl_bstride apart per batch item (0: shared). */
const ROPE = uniformStruct('rope.wgsl', ['n', 'l', 'h', 'half', 'tbl_row', 'tbl_bstride', 'wg_x']);

function run(op: Op, x: Tensor, tables: Tensor[], tblRow: number): Tensor {
  const name = op === 'flux' ? 'applyRopeFlux' : 'applyRopeHalf';
  if (x.dtype !== 'f16') requireF32(name, ['x', x]);
  requireF32(name, ...tables.map((t, i) => [['pe', 'cos', 'sin'][op === 'flux' ? 0 : i + 1], t] as [string, Tensor]));
  if (x.rank !== 4 || x.shape[3] % 2 !== 0) fail(`${name}: x ${fmtShape(x.shape)} must be [B, L, H, Dh] with even Dh`);
  const [B, L, H, Dh] = x.shape;
  for (const t of tables) {
    const tb = t.shape[0];
    const ok = (tb === 1 || tb === B) && t.numel === tb * L * tblRow && t.shape[1] === L;
    const want = op === 'flux' ? `[${B}|1, ${L}, ${Dh / 2}, 2, 2]` : `[${B}|1, ${L}, ${Dh}]`;
    if (!ok) fail(`${name}: table ${fmtShape(t.shape)} must be ${want} for x ${fmtShape(x.shape)}`);
  }
  const g = x.gpu;
  // f16 activation storage (ops/act-dtype.ts): x may be stored f16, out is the policy's dtype.
  const odt = outputDtype(g, true);
  const out = g.empty(x.shape, odt, name);
  const defines: Record<string, string | boolean | number> = { OP: op };
  if (x.dtype === 'f16') Object.assign(defines, { F16: true, X16: true });
  if (odt === 'f16') Object.assign(defines, { F16: true, O16: true, B_OVF: 3 + tables.length });
  if (x.numel === 0) return out;
  const bcast = tables[0].shape[0] === 1 && B > 1;
  const dispatch = (xv: Tensor, tv: Tensor[], ov: Tensor, nb: number, l: number, bstride: number): void => {
    const n = nb * l * H * (Dh / 2);
    const [wx, wy] = grid1d(g, n);
    g.dispatch({
      file: 'rope.wgsl',
      defines,
      uniforms: ROPE({ n, l, h: H, half: Dh / 2, tbl_row: tblRow, tbl_bstride: bstride, wg_x: wx }),
      bindings: [xv, ...tv, ov, ...(odt === 'f16' ? [overflowCounter(g)] : [])],
      workgroups: [wx, wy],
    });
  };
  const limit = g.maxBindingBytes;
  const xRow = H * Dh * 4, tRow = tblRow * 4; // f16 rows are half as wide: the same chunks fit
  if (x.byteLength <= limit && tables[0].byteLength <= limit) {
    dispatch(x, tables, out, B, L, bcast ? 0 : L * tblRow);
    return out;
  }
  // Token chunks per batch row: x/out rows and the matching table rows.
  let n = Math.floor(limit / Math.max(xRow, tRow));
  if (n < 1) fail(`${name}: one token of x ${fmtShape(x.shape)} exceeds the binding limit ${limit}`);
  if (n >= 64) n -= n % 64;
  const x2 = x.reshape([B * L, H * Dh]), o2 = out.reshape([B * L, H * Dh]);
  const t2 = tables.map((t) => t.reshape([t.shape[0] * L, tblRow]));
  for (let b = 0; b < B; b++)
    for (let l0 = 0; l0 < L; l0 += n) {
      const nl = Math.min(n, L - l0);
      const xv = x2.rows(b * L + l0, nl);
      const tv = t2.map((t, i) => t.rows((tables[i].shape[0] === 1 ? 0 : b * L) + l0, nl));
      const off = (b * L + l0) * H * Dh * (odt === 'f16' ? 2 : 4);
      // The output is bound in place when aligned; otherwise through a temporary (misaligned views are copied).
      const ov = off % g.storageAlign === 0 ? o2.rows(b * L + l0, nl) : g.empty([nl, H * Dh], odt, name);
      dispatch(xv, tv, ov, 1, nl, 0);
      if (ov.byteOffset !== off) g.copyInto(ov, out, off);
      for (const t of [xv, ...tv, ov]) t.dispose();
    }
  for (const t of [x2, o2, ...t2]) t.dispose();
  return out;
}

/** FLUX apply_rope: x [B, L, H, Dh], pe [B|1, L, Dh/2, 2, 2] → [B, L, H, Dh]. */
export function applyRopeFlux(x: Tensor, pe: Tensor): Tensor {
  if (x.rank === 4 && (pe.rank !== 5 || pe.shape[2] * 2 !== x.shape[3] || pe.shape[3] !== 2 || pe.shape[4] !== 2))
    fail(`applyRopeFlux: pe ${fmtShape(pe.shape)} must be [B|1, L, Dh/2, 2, 2] for x ${fmtShape(x.shape)}`);
  return run('flux', x, [pe], 2 * (x.shape[3] ?? 0));
}

/** rotate_half RoPE: x [B, L, H, Dh], cos/sin [B|1, L, Dh] → x*cos + rotate_half(x)*sin. */
export function applyRopeHalf(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  if (cos.rank !== 3 || sin.rank !== 3 || cos.shape.some((d, i) => d !== sin.shape[i]))
    fail(`applyRopeHalf: cos ${fmtShape(cos.shape)} and sin ${fmtShape(sin.shape)} must both be [B|1, L, Dh]`);
  if (x.rank === 4 && cos.shape[2] !== x.shape[3]) fail(`applyRopeHalf: cos ${fmtShape(cos.shape)} must be [B|1, L, Dh] for x ${fmtShape(x.shape)}`);
  return run('half', x, [cos, sin], x.shape[3] ?? 0);
}

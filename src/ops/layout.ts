/**
 * Layout ops (shaders/layout.wgsl, shaders/cast.wgsl): concat, slice, chunkLast, permute, pack2x2 /
 * unpack2x2, cast, gatherRows; plus `rowChunks`, the binding-limit splitter the other ops share.
 */
import type { Tensor, DType } from '../runtime/tensor.js';
import { DTYPE_BYTES } from '../runtime/tensor.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d } from './util.js';
import { uniformStruct } from '../runtime/uniforms.js';

/** The strided copy: n elements, dims d0..d5 (outermost first) with src strides s* and dst strides t*. */
const COPY = uniformStruct('layout.wgsl', [
  'n', 'wg_x', 'd0', 'd1', 'd2', 'd3', 'd4', 'd5', 's0', 's1', 's2', 's3', 's4', 's5', 't0', 't1', 't2', 't3', 't4', 't5', 'src_base', 'dst_base',
], { COPY: true });
/** gatherRows: n outputs of D-wide rows from a table chunk of nrows rows starting at row0. */
const GATHER = uniformStruct('layout.wgsl', ['n', 'wg_x', 'D', 'row0', 'nrows'], { GATHER: true });
const CAST = uniformStruct('cast.wgsl', ['n', 'wg_x']);
/** Members p0..p5 from the six merged dims of v. */
const indexed = <P extends string>(p: P, v: readonly number[]) =>
  Object.fromEntries(v.map((x, i) => [p + i, x])) as Record<`${P}${0 | 1 | 2 | 3 | 4 | 5}`, number>;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Split `rows` rows into chunks [start, count] such that every binding whose rows are `rowBytes[i]`
 * bytes wide stays within `maxBytes`, and every chunk starts on an `align`-byte boundary of each binding
 * (the device's storage-offset alignment, a power of two: a misaligned output view could not be bound in
 * place). One chunk [0, rows] when everything fits.
 */
export function rowChunks(op: string, rows: number, rowBytes: number[], maxBytes: number, align: number): [number, number][] {
  const widest = Math.max(1, ...rowBytes);
  if (rows * widest <= maxBytes) return [[0, rows]];
  let step = 1;
  for (const rb of rowBytes) if (rb > 0) step = Math.max(step, align / gcd(rb, align)); // powers of two: lcm = max
  const count = Math.floor(Math.floor(maxBytes / widest) / step) * step;
  if (count < 1)
    fail(`${op}: cannot split rows of ${widest} bytes into ${align}-byte-aligned chunks of ${step} rows within the binding limit ${maxBytes}`);
  const out: [number, number][] = [];
  for (let s = 0; s < rows; s += count) out.push([s, Math.min(count, rows - s)]);
  return out;
}

// ---- strided copy engine ------------------------------------------------------------------------

const WORD_TYPES: readonly DType[] = ['f32', 'i32', 'u32'];

/** concat / slice also move f16 tensors (f16 activation storage, ops/act-dtype.ts) as 2-byte elements. */
function requireWordOrF16(op: string, name: string, t: Tensor): void {
  if (t.dtype !== 'f16') requireWord(op, name, t);
}

function requireWord(op: string, name: string, t: Tensor): void {
  if (!WORD_TYPES.includes(t.dtype))
    fail(`${op}: ${name} ${t.toString()} has dtype ${t.dtype}; only f32/i32/u32 are supported (cast half tensors first)`);
}

function normDim(op: string, dim: number, rank: number): number {
  const d = dim < 0 ? dim + rank : dim;
  if (!Number.isInteger(d) || d < 0 || d >= rank) fail(`${op}: dim ${dim} out of range for rank ${rank}`);
  return d;
}

const prod = (a: readonly number[]): number => a.reduce((p, v) => p * v, 1);

function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/**
 * dst[dstBase + Σ ik·tk] = src[srcBase + Σ ik·sk] over `dims` (element units; src and dst bound whole).
 * Size-1 dims are dropped and dims contiguous in both src and dst merged, so any rank that reduces to
 * ≤ 6 works (e.g. pack2x2's rank-6 permute of a batch-1 latent becomes rank 4).
 */
function stridedCopy(op: string, src: Tensor, dst: Tensor, dims: number[], s: number[], t: number[], srcBase = 0, dstBase = 0): void {
  const D: number[] = [], S: number[] = [], T: number[] = [];
  dims.forEach((d, k) => {
    if (d === 1) return;
    const j = D.length - 1;
    if (j >= 0 && S[j] === s[k] * d && T[j] === t[k] * d) {
      D[j] *= d;
      S[j] = s[k];
      T[j] = t[k];
    } else {
      D.push(d);
      S.push(s[k]);
      T.push(t[k]);
    }
  });
  if (D.length > 6) fail(`${op}: layout of [${dims}] needs ${D.length} dims after merging contiguous ones (at most 6)`);
  while (D.length < 6) {
    D.unshift(1);
    S.unshift(0);
    T.unshift(0);
  }
  const n = prod(D);
  if (n === 0) return;
  const [wx, wy] = grid1d(src.gpu, n);
  src.gpu.dispatch({
    file: 'layout.wgsl',
    defines: { COPY: true, ...(src.dtype === 'f16' ? { HALF: true } : {}) },
    uniforms: COPY({ n, wg_x: wx, ...indexed('d', D), ...indexed('s', S), ...indexed('t', T), src_base: srcBase, dst_base: dstBase }),
    bindings: [src, dst],
    workgroups: [wx, wy],
  });
}

/**
 * For o < outer, j < len: dst[o·dstRow + dstOff + j] = src[o·srcRow + srcOff + j] (4-byte or f16 elements).
 * Long contiguous runs use buffer copies (no binding limit; f16 only where every run starts and ends on a
 * 4-byte boundary); otherwise the strided kernel, split into aligned row chunks when src or dst is
 * over the binding limit.
 */
function copyRows(op: string, src: Tensor, dst: Tensor, outer: number, srcRow: number, dstRow: number, len: number, srcOff: number, dstOff: number): void {
  if (outer === 0 || len === 0) return;
  const g = src.gpu;
  const max = g.maxBindingBytes;
  const eb = DTYPE_BYTES[src.dtype];
  const rowsTooWide = Math.max(srcRow, dstRow) * eb * 64 > max;
  const words = eb === 4 || [srcRow, dstRow, len, srcOff, dstOff].every((v) => v % 2 === 0) || (outer === 1 && srcOff % 2 === 0 && dstOff % 2 === 0 && len % 2 === 0);
  if (words && (outer === 1 || rowsTooWide || (len >= 16384 && outer <= 256))) {
    const flat = src.reshape([src.numel]);
    for (let o = 0; o < outer; o++) {
      const v = flat.rows(o * srcRow + srcOff, len);
      g.copyInto(v, dst, eb * (o * dstRow + dstOff));
      v.dispose();
    }
    flat.dispose();
    return;
  }
  const chunks = rowChunks(op, outer, [srcRow * eb, dstRow * eb], max, g.storageAlign);
  const s2 = src.reshape([outer, srcRow]), d2 = dst.reshape([outer, dstRow]);
  for (const [start, count] of chunks) {
    const whole = chunks.length === 1;
    const sv = whole ? s2 : s2.rows(start, count), dv = whole ? d2 : d2.rows(start, count);
    stridedCopy(op, sv, dv, [count, len], [srcRow, 1], [dstRow, 1], srcOff, dstOff);
    if (!whole) {
      sv.dispose();
      dv.dispose();
    }
  }
  s2.dispose();
  d2.dispose();
}

// ---- concat / slice / chunkLast -----------------------------------------------------------------

/** Concatenate along `dim` (same rank, dtype and other dims). */
export function concat(ts: Tensor[], dim: number): Tensor {
  if (ts.length === 0) fail('concat: no tensors given');
  // f16 activation storage (ops/act-dtype.ts): a mix of f16 and f32 parts is joined in f32
  if (ts.some((t) => t.dtype === 'f16') && ts.some((t) => t.dtype !== 'f16')) {
    const w = ts.map((t) => (t.dtype === 'f16' ? cast(t, 'f32') : t));
    try {
      return concat(w, dim);
    } finally {
      w.forEach((t, i) => t !== ts[i] && t.dispose());
    }
  }
  const first = ts[0];
  const d = normDim('concat', dim, first.rank);
  ts.forEach((t, i) => {
    requireWordOrF16('concat', `ts[${i}]`, t);
    const ok = t.dtype === first.dtype && t.rank === first.rank && t.shape.every((v, k) => k === d || v === first.shape[k]);
    if (!ok) fail(`concat: ts[${i}] ${t.dtype}${fmtShape(t.shape)} does not match ts[0] ${first.dtype}${fmtShape(first.shape)} outside dim ${d}`);
  });
  const shape = [...first.shape];
  shape[d] = ts.reduce((s, t) => s + t.shape[d], 0);
  const out = first.gpu.empty(shape, first.dtype, 'concat');
  const outer = prod(shape.slice(0, d)), inner = prod(shape.slice(d + 1));
  let off = 0;
  for (const t of ts) {
    const len = t.shape[d] * inner;
    copyRows('concat', t, out, outer, len, shape[d] * inner, len, 0, off);
    off += len;
  }
  return out;
}

/** dst[..., col:col+C] = src [..., C] for dst [..., D] with the same leading elements (a concat part written in place); returns dst. */
export function writeColumns(src: Tensor, dst: Tensor, col: number): Tensor {
  requireWordOrF16('writeColumns', 'src', src);
  requireWordOrF16('writeColumns', 'dst', dst);
  const C = src.rank ? src.shape[src.rank - 1] : 1, D = dst.rank ? dst.shape[dst.rank - 1] : 1;
  const outer = C ? src.numel / C : 0;
  if (src.dtype !== dst.dtype || !Number.isInteger(col) || col < 0 || col + C > D || outer * D !== dst.numel)
    fail(`writeColumns: src ${src.dtype}${fmtShape(src.shape)} does not fit columns [${col}, ${col + C}) of dst ${dst.dtype}${fmtShape(dst.shape)}`);
  copyRows('writeColumns', src, dst, outer, C, D, C, 0, col);
  return dst;
}

/** x[..., start:start+len, ...] along `dim`, as a new contiguous tensor. */
export function slice(x: Tensor, dim: number, start: number, len: number): Tensor {
  requireWordOrF16('slice', 'x', x);
  const d = normDim('slice', dim, x.rank);
  const D = x.shape[d];
  if (!Number.isInteger(start) || !Number.isInteger(len) || start < 0 || len < 0 || start + len > D)
    fail(`slice: range [${start}, ${start + len}) out of bounds for dim ${d} of x ${fmtShape(x.shape)}`);
  const shape = [...x.shape];
  shape[d] = len;
  const out = x.gpu.empty(shape, x.dtype, 'slice');
  const outer = prod(shape.slice(0, d)), inner = prod(shape.slice(d + 1));
  copyRows('slice', x, out, outer, D * inner, len * inner, len * inner, start * inner, 0);
  return out;
}

/** Split the last dim into n equal parts: [..., C·n] -> n × [..., C] (adaLN chunks, qkv split). */
export function chunkLast(x: Tensor, n: number): Tensor[] {
  const last = x.rank ? x.shape[x.rank - 1] : 0;
  if (!Number.isInteger(n) || n < 1 || last % n !== 0) fail(`chunkLast: last dim of x ${fmtShape(x.shape)} is not divisible by ${n}`);
  const C = last / n;
  return Array.from({ length: n }, (_, i) => slice(x, x.rank - 1, i * C, C));
}

// ---- permute / pack2x2 / unpack2x2 --------------------------------------------------------------

/**
 * out = x.permute(perm), contiguous; f32/i32/u32. Any rank that reduces to ≤ 6 after dropping size-1
 * dims and merging dims contiguous on both sides. Over the binding limit it splits into row blocks.
 */
export function permute(x: Tensor, perm: number[]): Tensor {
  requireWord('permute', 'x', x);
  const r = x.rank;
  const seen = new Set(perm);
  if (perm.length !== r || seen.size !== r || perm.some((p) => !Number.isInteger(p) || p < 0 || p >= r))
    fail(`permute: perm [${perm}] is not a permutation of the ${r} dims of x ${fmtShape(x.shape)}`);
  const outShape = perm.map((p) => x.shape[p]);
  const g = x.gpu;
  const out = g.empty(outShape, x.dtype, 'permute');
  if (x.numel === 0) return out;
  // Drop size-1 dims: they do not move data, and the split below wants a real leading dim.
  const keep = x.shape.map((v, i) => (v === 1 ? -1 : i)).filter((i) => i >= 0);
  const inShape = keep.map((i) => x.shape[i]);
  const p2 = perm.filter((p) => x.shape[p] !== 1).map((p) => keep.indexOf(p));
  if (p2.every((p, i) => p === i)) {
    g.copyInto(x, out);
    return out;
  }
  const inStr = contiguousStrides(inShape);
  const dims = p2.map((p) => inShape[p]);
  const srcStr = p2.map((p) => inStr[p]);
  const dstStr = contiguousStrides(dims);
  const max = g.maxBindingBytes;
  if (x.byteLength <= max) {
    stridedCopy('permute', x, out, dims, srcStr, dstStr);
    return out;
  }
  // Over the binding limit: bind contiguous row ranges of both sides. Output rows [o0, o0+co) along its
  // leading dim (x's dim p = p2[0]) × input rows [i0, i0+ci) along x's leading dim (output dim q) form a
  // sub-block whose source and destination both lie inside those two views. When p == 0 the two row
  // ranges coincide and one loop suffices.
  const p = p2[0], q = p2.indexOf(0);
  const inRow = x.numel / inShape[0], outRow = x.numel / dims[0];
  const xs = x.reshape([inShape[0], inRow]), os = out.reshape([dims[0], outRow]);
  const outChunks = rowChunks('permute', dims[0], [outRow * 4], max, g.storageAlign);
  const inChunks = p === 0 ? [[0, 0]] : rowChunks('permute', inShape[0], [inRow * 4], max, g.storageAlign);
  for (const [o0, co] of outChunks) {
    const dv = os.rows(o0, co);
    for (const [i0, ci] of inChunks) {
      const sv = p === 0 ? xs.rows(o0, co) : xs.rows(i0, ci);
      const sub = [...dims];
      sub[0] = co;
      if (p !== 0) sub[q] = ci;
      // offsets of the block inside the views: rows before o0 along x's dim p; rows before i0 along out dim q
      const srcBase = p === 0 ? 0 : o0 * srcStr[0];
      const dstBase = p === 0 ? 0 : i0 * dstStr[q];
      stridedCopy('permute', sv, dv, sub, srcStr, dstStr, srcBase, dstBase);
      sv.dispose();
    }
    dv.dispose();
  }
  xs.dispose();
  os.dispose();
  return out;
}

/** [B, C, H, W] -> [B, (H/2)(W/2), C·4]: einops `b c (h ph) (w pw) -> b (h w) (c ph pw)`, ph = pw = 2. */
export function pack2x2(latent: Tensor): Tensor {
  if (latent.rank !== 4 || latent.shape[2] % 2 || latent.shape[3] % 2)
    fail(`pack2x2: latent must be [B, C, H, W] with even H and W, got ${fmtShape(latent.shape)}`);
  const [B, C, H, W] = latent.shape;
  const h = H / 2, w = W / 2;
  const v = latent.reshape([B, C, h, 2, w, 2]);
  const p = permute(v, [0, 2, 4, 1, 3, 5]); // [B, h, w, C, 2, 2]
  v.dispose();
  const out = p.reshape([B, h * w, C * 4]);
  p.dispose();
  return out;
}

/** Inverse of pack2x2: tokens [B, h·w, C·4] -> [B, C, 2h, 2w]. */
export function unpack2x2(tokens: Tensor, h: number, w: number): Tensor {
  if (tokens.rank !== 3 || tokens.shape[1] !== h * w || tokens.shape[2] % 4)
    fail(`unpack2x2: tokens ${fmtShape(tokens.shape)} must be [B, ${h}*${w}, C*4]`);
  const [B, , C4] = tokens.shape;
  const C = C4 / 4;
  const v = tokens.reshape([B, h, w, C, 2, 2]);
  const p = permute(v, [0, 3, 1, 4, 2, 5]); // [B, C, h, 2, w, 2]
  v.dispose();
  const out = p.reshape([B, C, 2 * h, 2 * w]);
  p.dispose();
  return out;
}

// ---- cast / gatherRows --------------------------------------------------------------------------

/** Widen bf16/f16 (or copy f32) to a new f32 tensor. */
export function cast(x: Tensor, dtype: 'f32'): Tensor {
  if (dtype !== 'f32') fail(`cast: target dtype ${String(dtype)} not supported (only f32)`);
  const g = x.gpu;
  if (x.dtype === 'f32') return g.copy(x, 'cast');
  if (x.dtype !== 'bf16' && x.dtype !== 'f16') fail(`cast: x ${x.toString()} has dtype ${x.dtype}; expected bf16/f16/f32`);
  const out = g.empty(x.shape, 'f32', 'cast');
  const n = x.numel;
  const xf = x.reshape([n]), of = out.reshape([n]);
  const chunks = rowChunks('cast', n, [2, 4], g.maxBindingBytes, g.storageAlign); // aligned in both (128-element steps at 256)
  for (const [start, count] of chunks) {
    const whole = chunks.length === 1;
    const xv = whole ? xf : xf.rows(start, count), ov = whole ? of : of.rows(start, count);
    const [wx, wy] = grid1d(g, count);
    g.dispatch({ file: 'cast.wgsl', defines: { SRC_DT: x.dtype }, uniforms: CAST({ n: count, wg_x: wx }), bindings: [xv, ov], workgroups: [wx, wy] });
    if (!whole) {
      xv.dispose();
      ov.dispose();
    }
  }
  xf.dispose();
  of.dispose();
  return out;
}

const TABLE_AT: Record<string, string> = { f32: 'none', bf16: 'bf16_at', f16: 'f16_at' };

/** out[r] = table[idx[r]] (embedding lookup): table [N, D] f32|bf16|f16 -> [idx.length, D] f32. */
export function gatherRows(table: Tensor, idx: Int32Array): Tensor {
  if (table.rank !== 2) fail(`gatherRows: table must be [N, D], got ${fmtShape(table.shape)}`);
  if (!(table.dtype in TABLE_AT)) fail(`gatherRows: table dtype ${table.dtype} not supported (expected f32/bf16/f16)`);
  const [N, D] = table.shape;
  for (let i = 0; i < idx.length; i++)
    if (!(idx[i] >= 0 && idx[i] < N)) fail(`gatherRows: idx[${i}] = ${idx[i]} out of range for table ${fmtShape(table.shape)}`);
  const g = table.gpu;
  const M = idx.length;
  const out = g.empty([M, D], 'f32', 'gatherRows');
  if (M === 0 || D === 0) return out;
  const max = g.maxBindingBytes;
  const idxT = g.upload(idx, [M], 'i32', 'gather idx');
  const tableChunks = rowChunks('gatherRows', N, [D * (table.dtype === 'f32' ? 4 : 2)], max, g.storageAlign);
  const outChunks = rowChunks('gatherRows', M, [D * 4, 4], max, g.storageAlign);
  for (const [os, oc] of outChunks) {
    const oneOut = outChunks.length === 1;
    const ov = oneOut ? out : out.rows(os, oc), iv = oneOut ? idxT : idxT.rows(os, oc);
    const [wx, wy] = grid1d(g, oc * D);
    for (const [ts, tc] of tableChunks) {
      // skip table chunks that no index of this output chunk refers to (idx is on the host)
      let used = false;
      for (let i = os; i < os + oc && !used; i++) used = idx[i] >= ts && idx[i] < ts + tc;
      if (!used) continue;
      const tv = tableChunks.length === 1 ? table : table.rows(ts, tc);
      g.dispatch({
        file: 'layout.wgsl',
        entry: 'gather',
        defines: { GATHER: true, T_DT: table.dtype, T_AT: TABLE_AT[table.dtype] },
        uniforms: GATHER({ n: oc * D, wg_x: wx, D, row0: ts, nrows: tc }),
        bindings: [tv, iv, ov],
        workgroups: [wx, wy],
      });
      if (tv !== table) tv.dispose();
    }
    if (!oneOut) {
      ov.dispose();
      iv.dispose();
    }
  }
  idxT.dispose();
  return out;
}

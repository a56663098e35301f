/**
 * Scaled dot-product attention (shaders/attention.wgsl): flash-style online softmax, never an Lq×Lk
 * buffer. Token-major: q [B, Lq, H, Dh], k/v [B, Lk, Hkv, Dh] → out [B, Lq, H, Dh], all f32.
 *
 * Variants are chosen by Dh (register and shared-memory tiling, ≤ 16 KiB workgroup storage whatever
 * the device offers). When q/k/v/out/mask do not fit one binding (g.maxBindingBytes) the work is split
 * per batch, along query tokens (independent) and along key tokens (the running max/sum/accumulator is
 * carried between key chunks in `out` and a small [nq, H, 2] state buffer, then normalised).
 */
import type { Tensor } from '../runtime/tensor.js';
import type { Gpu } from '../runtime/gpu.js';
import { uniformStruct } from '../runtime/uniforms.js';
import { fail, fmtShape } from '../errors.js';
import { grid1d, requireF32 } from './util.js';
import { planAttention, attentionBinding } from './plan-attention.js';
import { warnNoMatrixUnits } from './plan-gemm.js';
import { attentionSgmat } from './attention-sgmat.js';
import { outputDtype } from './act-dtype.js';
import { cast } from './layout.js';

export interface AttentionOptions {
  /** Default 1/sqrt(Dh). */
  scale?: number;
  /** Key j visible to query i iff j <= i + Lk - Lq (the lower triangle when Lq == Lk). */
  causal?: boolean;
  /** [B, Lk] f32 0/1: keys with 0 are never attended to. */
  keyMask?: Tensor;
  /** [B, Lq, Lk] f32 0/1: arbitrary boolean mask (1 = attend). */
  mask?: Tensor;
  /** [Lq] i32 segment id per position (needs Lq == Lk): attend only within the same id. */
  segments?: Tensor;
  /** [B, Lq] f32 0/1: rows with 0 get exactly 0 (flash-attention unpad semantics). */
  queryMask?: Tensor;
  /** Kernel: 'auto' follows the device's plan (src/ops/plan-attention.ts); tests and the bench force one. */
  kernel?: 'auto' | 'subgroup-matrix' | 'register';
}

/** Workgroup storage we allow ourselves: the WebGPU default, whatever the device offers. */
const WG_STORAGE = 16384;

/**
 * One chunk: lq x lk queries x keys from q_off / k_off of the full lq_full x lk_full; b_off: the first
 * batch item of nb; state_in / finalize: the flash state in ml carried over key chunks.
 */
const ATTENTION = uniformStruct('attention.wgsl', [
  'lq', 'lk', 'h', 'hkv', 'q_off', 'k_off', 'lq_full', 'lk_full', 'b_off', 'nb', 'n_qt', 'wg_x',
  'causal', 'state_in', 'finalize', 'scale_log2:f32', 'dc_rt', 'vk_rt',
]);

interface Variant {
  DH: number; BQ: number; TPR: number; BK: number; DC: number; VK: number; SH: number;
  QK2: boolean; QK4: boolean; PV2: boolean;
}

/**
 * Tiling by head dim: TPR lanes per query row split Dh (≤ 32 accumulators per lane); the q·k phase runs
 * in NCH ∈ {1, 2, 4} head-dim chunks and the p·v phase in 1 or 2 key sub-tiles, as explicit phases
 * (see the shader header), within 16 KiB of workgroup storage.
 */
export function attentionVariant(dh: number): Variant {
  const TPR = dh <= 16 ? 4 : dh <= 128 ? 8 : dh <= 512 ? 16 : 32;
  const nc = Math.ceil(dh / TPR);
  const dhp = nc * TPR;
  const cands: (Variant & { phases: number })[] = [];
  for (const BQ of [32, 16, 8])
    for (const BK of [32, 16, 8, 4])
      for (const nch of [1, 2, 4])
        for (const nvk of [1, 2]) {
          const DC = Math.ceil(dh / nch / 4) * 4;
          const VK = BK / nvk;
          const SH = Math.max(BQ * DC + BK * (DC + 1), VK * dhp);
          const floats = SH + BQ * BK + BQ * TPR + 1; // sh, pp, red, flag
          if (floats * 4 > WG_STORAGE || DC * (nch - 1) >= dh) continue;
          cands.push({ DH: dh, BQ, TPR, BK, DC, VK, SH, QK2: nch >= 2, QK4: nch === 4, PV2: nvk === 2, phases: nch + nvk });
        }
  if (!cands.length) fail(`attention: no tiling of head dim ${dh} fits ${WG_STORAGE} bytes of workgroup storage`);
  // K/V reuse first (query rows), then at least 16 keys per tile (barriers per key), then fewer phases
  // (lavapipe compile time), then more keys.
  cands.sort((a, b) => b.BQ - a.BQ || Math.min(b.BK, 16) - Math.min(a.BK, 16) || a.phases - b.phases || b.BK - a.BK);
  const { phases: _p, ...v } = cands[0];
  return v;
}

function check(cond: boolean, msg: string): void {
  if (!cond) fail(`attention: ${msg}`);
}

export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  // f16 activation storage (ops/act-dtype.ts): q, k, v all f16 on the subgroup-matrix kernel; the register
  // kernel and the split path read f32 (widened copies, with the f32 result stored as the policy says).
  const half = [q, k, v].filter((t) => t.dtype === 'f16').length;
  if (half === 3 || half === 0) {
    if (!half) requireF32('attention', ['q', q], ['k', k], ['v', v]);
  } else fail(`attention: q, k, v must share one storage dtype (f32 or f16), got ${q.dtype}/${k.dtype}/${v.dtype}`);
  check(q.rank === 4 && k.rank === 4 && v.rank === 4, `q ${fmtShape(q.shape)}, k ${fmtShape(k.shape)}, v ${fmtShape(v.shape)} must be [B, L, H, Dh]`);
  const [B, Lq, H, Dh] = q.shape;
  const [Bk, Lk, Hkv, Dhk] = k.shape;
  check(Bk === B && Dhk === Dh, `k ${fmtShape(k.shape)} does not match q ${fmtShape(q.shape)} (batch and head dim)`);
  check(v.shape.every((d, i) => d === k.shape[i]), `v ${fmtShape(v.shape)} must have k's shape ${fmtShape(k.shape)}`);
  check(Hkv > 0 && H % Hkv === 0, `kv heads ${Hkv} (k ${fmtShape(k.shape)}) must divide query heads ${H} (q ${fmtShape(q.shape)})`);
  check(Lk > 0 && Dh > 0, `k ${fmtShape(k.shape)} has no keys or an empty head dim`);
  const { keyMask, mask, segments, queryMask } = opts;
  if (keyMask) {
    requireF32('attention', ['keyMask', keyMask]);
    check(keyMask.numel === B * Lk, `keyMask ${fmtShape(keyMask.shape)} must be [B, Lk] = [${B},${Lk}]`);
  }
  if (mask) {
    requireF32('attention', ['mask', mask]);
    check(mask.numel === B * Lq * Lk, `mask ${fmtShape(mask.shape)} must be [B, Lq, Lk] = [${B},${Lq},${Lk}]`);
  }
  if (queryMask) {
    requireF32('attention', ['queryMask', queryMask]);
    check(queryMask.numel === B * Lq, `queryMask ${fmtShape(queryMask.shape)} must be [B, Lq] = [${B},${Lq}]`);
  }
  if (segments) {
    check(segments.dtype === 'i32', `segments must be i32, got ${segments.dtype}`);
    check(Lq === Lk && segments.numel === Lq, `segments ${fmtShape(segments.shape)} must be [Lq] with Lq == Lk (q ${fmtShape(q.shape)}, k ${fmtShape(k.shape)})`);
  }
  const g = q.gpu;
  const limit = g.maxBindingBytes;
  const qRow = H * Dh * 4, kRow = Hkv * Dh * 4, mRow = mask ? Lk * 4 : 0; // f32 rows (f16 ones fit where these do)
  const whole = B * Lq * Math.max(qRow, mRow) <= limit && B * Lk * kRow <= limit;
  const plan = planAttention(g, { Lq, Lk, Dh }, opts.kernel);
  const sgmat = plan.kind === 'subgroup-matrix' && (whole || attentionBinding(limit, B, Lq, Lk, qRow, kRow, mRow) === 'per-item');
  if (half && !sgmat) {
    const wide = [q, k, v].map((t) => cast(t, 'f32'));
    try {
      return attention(wide[0], wide[1], wide[2], opts);
    } finally {
      for (const t of wide) t.dispose();
    }
  }
  const out = g.empty([B, Lq, H, Dh], outputDtype(g, sgmat), 'attention');
  if (B * Lq * H === 0) return out;

  const scale = opts.scale ?? 1 / Math.sqrt(Dh);
  const vr = attentionVariant(Dh);
  const ctx: Ctx = { g, vr, B, Lq, Lk, H, Hkv, Dh, scale, causal: !!opts.causal, keyMask, mask, segments, queryMask };
  if (plan.kind === 'subgroup-matrix') {
    const sg = { B, Lq, Lk, H, Hkv, scale, causal: !!opts.causal, segments };
    if (whole) {
      attentionSgmat(g, plan, { ...sg, q, k, v, out, keyMask, mask, queryMask });
      return out;
    }
    // Over the binding limit (q is 217 MB at 1024², CFG batch 2): one batch item per dispatch when it fits.
    if (attentionBinding(limit, B, Lq, Lk, qRow, kRow, mRow) === 'per-item') {
      const item = (t: Tensor | undefined, b: number): Tensor | undefined => {
        if (!t) return undefined;
        const r = t.reshape([B, t.numel / B]);
        const v = r.rows(b, 1); // the kernel reads shapes from its arguments, not from the views
        r.dispose();
        return v;
      };
      for (let b = 0; b < B; b++) {
        const outOff = b * Lq * H * Dh * (out.dtype === 'f16' ? 2 : 4);
        const views = [item(q, b)!, item(k, b)!, item(v, b)!, item(keyMask, b), item(mask, b), item(queryMask, b)];
        // A misaligned item of out is computed in a temporary and copied into out once (out starts at byte 0:
        // ov is a temporary iff its byteOffset differs from outOff); bound as a view, the runtime would realign
        // it by copying it in before the dispatch as well, for a kernel that only writes it.
        const ov = outOff % g.storageAlign === 0 ? item(out, b)! : g.empty([Lq, H * Dh], out.dtype, 'attention item');
        const [qv, kv, vv, kmv, mv, qmv] = views;
        attentionSgmat(g, plan, { ...sg, B: 1, q: qv!, k: kv!, v: vv!, out: ov, keyMask: kmv, mask: mv, queryMask: qmv });
        if (ov.byteOffset !== outOff) g.copyInto(ov, out, outOff);
        for (const t of [...views, ov]) t?.dispose();
      }
      return out;
    }
    warnNoMatrixUnits(g, `attention (Dh ${Dh})`, `one batch item of q (${Lq * qRow} bytes) exceeds the binding limit ${limit}; the register kernel splits it`);
  }
  if (whole) {
    run(ctx, { q, k, v, out, mask, nb: B, bOff: 0, q0: 0, nq: Lq, k0: 0, nk: Lk, stateIn: false, finalize: true });
    return out;
  }
  // Split: per batch; query rows in chunks that fit (q/out rows, mask rows); keys likewise.
  const fitRows = (rowBytes: number, n: number, what: string): number => {
    let r = Math.floor(limit / rowBytes);
    check(r >= 1, `one ${what} row (${rowBytes} bytes) exceeds the device's binding limit ${limit}`);
    if (r >= 64) r -= r % 64; // 64 rows of whole words span a multiple of 256 bytes, so of every storageAlign (16, 32, 256)
    return Math.min(r, n);
  };
  const nqMax = fitRows(Math.max(qRow, mRow), Lq, 'query');
  const nkMax = fitRows(kRow, Lk, 'key');
  const q2 = q.reshape([B * Lq, H * Dh]), k2 = k.reshape([B * Lk, Hkv * Dh]), v2 = v.reshape([B * Lk, Hkv * Dh]);
  const o2 = out.reshape([B * Lq, H * Dh]);
  const mk2 = mask?.reshape([B * Lq, Lk]);
  for (let b = 0; b < B; b++) {
    for (let q0 = 0; q0 < Lq; q0 += nqMax) {
      const nq = Math.min(nqMax, Lq - q0);
      const qv = q2.rows(b * Lq + q0, nq);
      const mv = mk2?.rows(b * Lq + q0, nq);
      const outOff = (b * Lq + q0) * qRow;
      // A misaligned chunk of out gets one temporary for all its key chunks, copied into out at the end: the
      // runtime would realign it per dispatch, copying it in and back around each key chunk.
      const ov = outOff % g.storageAlign === 0 ? o2.rows(b * Lq + q0, nq) : g.empty([nq, H * Dh], 'f32', 'attention chunk');
      const nChunks = Math.ceil(Lk / nkMax);
      const ml = nChunks > 1 ? g.empty([nq, H, 2], 'f32', 'attention state') : undefined;
      for (let c = 0; c < nChunks; c++) {
        const k0 = c * nkMax, nk = Math.min(nkMax, Lk - k0);
        const kv = k2.rows(b * Lk + k0, nk), vv = v2.rows(b * Lk + k0, nk);
        run(ctx, { q: qv, k: kv, v: vv, out: ov, mask: mv, ml, nb: 1, bOff: b, q0, nq, k0, nk, stateIn: c > 0, finalize: c === nChunks - 1 });
        kv.dispose();
        vv.dispose();
      }
      if (ov.byteOffset !== outOff) g.copyInto(ov, out, outOff);
      for (const t of [qv, mv, ov, ml]) t?.dispose();
    }
  }
  for (const t of [q2, k2, v2, o2, mk2]) t?.dispose();
  return out;
}

interface Ctx {
  g: Gpu; vr: Variant; B: number; Lq: number; Lk: number; H: number; Hkv: number; Dh: number; scale: number; causal: boolean;
  keyMask?: Tensor; mask?: Tensor; segments?: Tensor; queryMask?: Tensor;
}
interface Chunk {
  q: Tensor; k: Tensor; v: Tensor; out: Tensor; mask?: Tensor; ml?: Tensor;
  nb: number; bOff: number; q0: number; nq: number; k0: number; nk: number; stateIn: boolean; finalize: boolean;
}

function run(c: Ctx, ch: Chunk): void {
  const { vr } = c;
  const defines: Record<string, number | boolean> = { ...vr };
  const bindings = [ch.q, ch.k, ch.v, ch.out];
  const add = (name: string, t: Tensor | undefined, flag: string): void => {
    if (!t) return;
    bindings.push(t);
    defines[flag] = true;
    defines[name] = bindings.length; // binding numbers start at 1 (0 is the uniform block)
  };
  add('B_ML', ch.ml, 'STATE');
  add('B_KEYMASK', c.keyMask, 'KEYMASK');
  add('B_MASK', ch.mask, 'MASK');
  add('B_SEG', c.segments, 'SEG');
  add('B_QMASK', c.queryMask, 'QMASK');
  // Skipping whole key tiles pays when masks blank out large regions (windows, padding).
  if (c.keyMask || ch.mask || c.segments) defines.SKIP = true;
  const nQt = Math.ceil(ch.nq / vr.BQ);
  const [wx, wy] = grid1d(c.g, nQt * c.H * ch.nb, 1);
  const uniforms = ATTENTION({
    lq: ch.nq, lk: ch.nk, h: c.H, hkv: c.Hkv, q_off: ch.q0, k_off: ch.k0, lq_full: c.Lq, lk_full: c.Lk,
    b_off: ch.bOff, nb: ch.nb, n_qt: nQt, wg_x: wx, causal: c.causal ? 1 : 0, state_in: ch.stateIn ? 1 : 0,
    finalize: ch.finalize ? 1 : 0, scale_log2: c.scale * Math.LOG2E, dc_rt: vr.DC, vk_rt: vr.VK,
  });
  c.g.dispatch({ file: 'attention.wgsl', defines, uniforms, bindings, workgroups: [wx, wy] });
}

#ifdef HALF
enable f16;
#endif
// Layout kernels: a generic rank-6 strided copy (permute, slice, concat, chunkLast, pack/unpack 2x2)
// and a row gather (embedding lookup).
//
// Entry `main` (define COPY): for each logical index (i0..i5) of the shape d0..d5 (d5 innermost),
//   dst[dst_base + Σ ik·tk] = src[src_base + Σ ik·sk]       (4-byte elements copied as raw bits: f32/i32/u32)
//   HALF: 2-byte elements (f16 activation storage, src/ops/act-dtype.ts: concat / slice of f16 tensors).
//   Bindings: 0 uniform {n, wg_x, d0..d5, s0..s5, t0..t5, src_base, dst_base}; 1 src (u32); 2 dst (u32, rw).
//   Dispatch: ceil(n / 256) workgroups of 256 folded into (wg_x, y); n = d0·…·d5 (the host collapses
//   contiguous dims and pads the shape with leading 1s to rank 6).
//
// Entry `gather` (define GATHER; T_DT = f32 | bf16 | f16, T_AT the widening fn for half types):
//   out[r, c] = table[idx[r] - row0, c] for rows r whose idx falls in [row0, row0 + nrows) of this table
//   chunk (the host splits a table over the binding limit into row chunks and dispatches once per chunk;
//   every output row is written by exactly one chunk).
//   Bindings: 0 uniform {n, wg_x, D, row0, nrows}; 1 table (f32 | packed u32); 2 idx (i32 [M]); 3 out (f32 [M, D]).
//   Dispatch: ceil(M·D / 256) workgroups folded into (wg_x, y).
#include "common/dtype.wgsl"

#ifdef COPY
struct Params {
  n: u32, wg_x: u32,
  d0: u32, d1: u32, d2: u32, d3: u32, d4: u32, d5: u32,
  s0: u32, s1: u32, s2: u32, s3: u32, s4: u32, s5: u32,
  t0: u32, t1: u32, t2: u32, t3: u32, t4: u32, t5: u32,
  src_base: u32, dst_base: u32,
}
@group(0) @binding(0) var<uniform> U: Params;
#ifdef HALF
@group(0) @binding(1) var<storage, read> src: array<f16>;
@group(0) @binding(2) var<storage, read_write> dst: array<f16>;
#else
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
  var r = i;
  let i5 = r % U.d5; r = r / U.d5;
  let i4 = r % U.d4; r = r / U.d4;
  let i3 = r % U.d3; r = r / U.d3;
  let i2 = r % U.d2; r = r / U.d2;
  let i1 = r % U.d1; r = r / U.d1;
  let i0 = r;
  let s = U.src_base + i0 * U.s0 + i1 * U.s1 + i2 * U.s2 + i3 * U.s3 + i4 * U.s4 + i5 * U.s5;
  let t = U.dst_base + i0 * U.t0 + i1 * U.t1 + i2 * U.t2 + i3 * U.t3 + i4 * U.t4 + i5 * U.t5;
  dst[t] = src[s];
}
#endif

#ifdef GATHER
struct Params { n: u32, wg_x: u32, D: u32, row0: u32, nrows: u32 }
@group(0) @binding(0) var<uniform> U: Params;
#if T_DT == f32
@group(0) @binding(1) var<storage, read> table: array<f32>;
fn ld(e: u32) -> f32 { return table[e]; }
#else
@group(0) @binding(1) var<storage, read> table: array<u32>;
fn ld(e: u32) -> f32 { return T_AT(table[e >> 1u], e); }
#endif
@group(0) @binding(2) var<storage, read> idx: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * U.wg_x + wid.x) * 256u + li;
  if (i >= U.n) { return; }
  let r = i / U.D;
  let c = i % U.D;
  let k = u32(idx[r]);   // validated on the host: 0 <= idx < N
  if (k < U.row0 || k >= U.row0 + U.nrows) { return; }
  out[i] = ld((k - U.row0) * U.D + c);
}
#endif

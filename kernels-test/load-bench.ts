/**
 * Loading throughput (part of `npm run bench`; alone: `node dist/kernels-test/load-bench.js [--mb N]`).
 *
 * Writes a DiT-like bf16 checkpoint of about 1 GB (blocks of qkv [9216, 3072], proj [3072, 3072],
 * mlp [12288, 3072] / [3072, 12288] weights with their biases) into a temp directory, deleted afterwards,
 * reads it once so that the page cache is warm for every row (raw reads and loads alike), then prints in
 * one run:
 *   raw read        sequential `FileHandle.read` of the file into one reused 4 MiB buffer (the ceiling every
 *                   ratio is taken against); and `readFile` into fresh memory
 *   fresh memory    first write of newly allocated host memory (page faults; lavapipe's GPU memory is host
 *                   memory, so this bounds any load into new GPU buffers on the same machine)
 *   load bf16 / q8  the real load path (`loadLinearWeight` / `loadWeight`, as `Linear.load` calls them) into
 *                   GPU buffers, until the GPU has them (`g.sync()`), with the device's default upload mode
 *                   (runtime/upload-ring.ts: 'write' on CPU adapters, else 'ring'): into new buffers (the first
 *                   load), then into the buffers the first load freed (kept by the pool), which is the
 *                   loader's own speed; then the same with the other upload mode; and the q8 load's CPU time
 *                   (every thread of the process, lavapipe's included), which over the core count bounds its
 *                   wall time from below whatever other jobs do
 *   pack kernel     the q8 packing kernel alone over 64 MiB of bf16 (on lavapipe it runs on the same CPU),
 *                   and the share of the q8 load's time that it accounts for; next to it the host quantizer
 *                   (quantizeBf16Into, one thread) over the same bytes: the conversion's CPU cost either way
 *   Null backend    the same loads on Dawn's Null backend (no GPU work: the copies into GPU memory and the
 *                   packing kernel cost nothing), i.e. the host side of each path, in both upload modes
 * The raw read and the reused-buffer loads run in ROUNDS interleaved rounds and each row reports its best
 * round, so that load from other processes on a shared machine hits every row alike; MB/s are of checkpoint
 * bytes, ratios against the best raw read.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gpu } from '../src/runtime/gpu.js';
import type { UploadMode } from '../src/runtime/upload-ring.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { buildHeader, type HeaderEntry } from '../src/io/safetensors.js';
import { loadLinearWeight, withWeightPolicy, type Weight, type WeightsOption } from '../src/nn/weight.js';
import { loadWeight } from '../src/nn/weights.js';
import { packQuantChunk } from '../src/ops/pack-quant.js';
import { quantizeBf16Into, quantScaleTable } from '../src/io/quant.js';
import type { Tensor } from '../src/runtime/tensor.js';

const CHUNK = 4 << 20;
const ROUNDS = 3;

/** Header entries of `blocks` DiT-like blocks (bf16 weights and biases). */
function entries(blocks: number): HeaderEntry[] {
  const out: HeaderEntry[] = [];
  for (let b = 0; b < blocks; b++)
    for (const [n, N, K] of [['qkv', 9216, 3072], ['proj', 3072, 3072], ['mlp.0', 12288, 3072], ['mlp.2', 3072, 12288]] as const) {
      out.push({ name: `blocks.${b}.${n}.weight`, dtype: 'BF16', shape: [N, K] });
      out.push({ name: `blocks.${b}.${n}.bias`, dtype: 'BF16', shape: [N] });
    }
  return out;
}

/** Write the checkpoint chunk by chunk (finite bf16 values in ±[2^-8, 2^8)), never all of it in memory. */
export async function writeCheckpoint(path: string, targetBytes: number): Promise<number> {
  const blocks = Math.max(1, Math.ceil(targetBytes / (36864 * 3072 * 2)));
  const { prefix, dataBytes } = buildHeader(entries(blocks));
  const fh = await open(path, 'w');
  try {
    await fh.write(prefix, 0, prefix.length, 0);
    const buf = new Uint16Array(CHUNK / 2);
    let x = 0x9e3779b9;
    for (let pos = 0; pos < dataBytes; pos += CHUNK) {
      const n = Math.min(CHUNK, dataBytes - pos);
      for (let i = 0; i < n / 2; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        buf[i] = (x & 0x807f) | ((119 + ((x >>> 8) & 15)) << 7);
      }
      await fh.write(new Uint8Array(buf.buffer, 0, n), 0, n, prefix.length + pos);
    }
  } finally {
    await fh.close();
  }
  return prefix.length + dataBytes;
}

async function rawRead(path: string): Promise<number> {
  const fh = await open(path, 'r');
  const buf = new Uint8Array(CHUNK);
  const t0 = performance.now();
  let pos = 0;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, CHUNK, pos);
    if (!bytesRead) break;
    pos += bytesRead;
  }
  const ms = performance.now() - t0;
  await fh.close();
  return ms;
}

function freshMemoryMBs(bytes: number): number {
  const t0 = performance.now();
  new Uint8Array(bytes).fill(1);
  return bytes / (performance.now() - t0) / 1e3;
}

/** CPU ms of this process since `u0` (every thread: the loader's, Dawn's and lavapipe's, which runs the kernels). */
function cpuMs(u0: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(u0);
  return (u.user + u.system) / 1e3;
}

let lastCpu = 0;
/**
 * ms to load every tensor under `weights` and have it on the GPU (its process CPU ms in `lastCpu`); the
 * tensors are freed (into the pool). `each`: free each tensor as soon as it is loaded (the Null backend holds
 * at most 512 MiB).
 */
async function load(g: Gpu, path: string, weights: WeightsOption, each = false): Promise<number> {
  const ck = withWeightPolicy(await Checkpoint.open(path), { weights });
  const held: (Weight | Tensor)[] = [];
  try {
    const t0 = performance.now(), u0 = process.cpuUsage();
    for (const k of ck.keys()) {
      held.push(k.endsWith('.weight') ? await loadLinearWeight(g, ck, k) : await loadWeight(g, ck, k));
      if (each) held.pop()!.dispose();
    }
    await g.sync();
    lastCpu = cpuMs(u0);
    return performance.now() - t0;
  } finally {
    for (const h of held) h.dispose();
    g.flush();
    await ck.close();
  }
}

/** Wall ms of the q8 packing kernel over `bytes` of bf16, in 4 MiB chunks of [rows, 3072] as the loader packs them. */
async function packKernelMs(g: Gpu, bytes: number, rounds: number): Promise<number> {
  const K = 3072, rows = Math.floor(CHUNK / (2 * K) / 2) * 2, blocks = (rows * K) / 32;
  const x = g.empty([(rows * K) / 2], 'u32', 'bf16 chunk');
  g.writeBytes(x, 0, new Uint8Array(rows * K * 2).fill(0x3c));
  const table = g.upload(quantScaleTable('q8'), [1 << 15], 'u32');
  const codes = g.empty([(rows * K) / 4], 'u32');
  const scales = g.empty([blocks / 2], 'u32');
  try {
    packQuantChunk(x, table, codes, scales, 'q8', 0, blocks); // compiles the pipeline
    await g.sync();
    const n = Math.ceil(bytes / (rows * K * 2));
    let best = Infinity;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) packQuantChunk(x, table, codes, scales, 'q8', 0, blocks);
      await g.sync();
      best = Math.min(best, performance.now() - t0);
    }
    return (best * bytes) / (n * rows * K * 2);
  } finally {
    for (const t of [x, table, codes, scales]) t.dispose();
  }
}

/** Wall ms of the host q8 quantizer (one thread) over `bytes` of bf16, in 4 MiB chunks of [rows, 3072]. */
function hostQuantMs(bytes: number): number {
  const K = 3072, rows = Math.floor(CHUNK / (2 * K) / 2) * 2, n = rows * K;
  const bits = new Uint16Array(n).map((_, i) => 0x3c00 + ((i * 2654435761) >>> 24)); // finite, varied
  const codes = new Uint8Array(n), scales = new Uint16Array(n / 32), wf = new Float32Array(n);
  const chunks = Math.ceil(bytes / (n * 2));
  const t0 = performance.now();
  for (let i = 0; i < chunks; i++) quantizeBf16Into(bits, rows, K, 'q8', codes, scales, wf);
  return ((performance.now() - t0) * bytes) / (chunks * n * 2);
}

export async function benchLoading(targetBytes = 1e9): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-load-bench-'));
  let g = await Gpu.create();
  const mode = g.uploadMode, other: UploadMode = mode === 'ring' ? 'write' : 'ring';
  let g2 = await Gpu.create({ upload: other });
  for (const x of [g, g2]) x.pool.maxCachedBytes = 4 * targetBytes; // keep the first load's buffers for the later ones
  try {
    const path = join(dir, 'dit-like.safetensors');
    const size = await writeCheckpoint(path, targetBytes);
    await rawRead(path); // warm the page cache
    const mbs = (ms: number) => size / ms / 1e3;
    const d = g.describe();
    console.log(`loading: ${(size / 1e9).toFixed(2)} GB bf16 checkpoint, page cache warm for every row, device ${d.vendor} ${d.description}`);
    const t0 = performance.now();
    await readFile(path); // into fresh memory (dropped at once): the same page faults as new buffers
    const rawFresh = mbs(performance.now() - t0);
    const fresh = freshMemoryMBs(256 << 20);
    const first = { bf16: mbs(await load(g, path, 'bf16')), q8: mbs(await load(g, path, 'q8')) };
    await load(g2, path, 'bf16'); // the other mode's buffers, for its reused-buffer rows
    await load(g2, path, 'q8');
    // Interleaved rounds: raw read, then each load into the pool's buffers; best round of each row.
    const best = { raw: Infinity, bf16: Infinity, q8: Infinity, bf16b: Infinity, q8b: Infinity, pack: Infinity, host: Infinity, q8cpu: Infinity };
    const nul = { bf16: Infinity, q8: Infinity, bf16b: Infinity, q8b: Infinity };
    for (let r = 0; r < ROUNDS; r++) {
      best.raw = Math.min(best.raw, await rawRead(path));
      best.bf16 = Math.min(best.bf16, await load(g, path, 'bf16'));
      best.q8 = Math.min(best.q8, await load(g, path, 'q8'));
      best.q8cpu = Math.min(best.q8cpu, lastCpu);
      best.bf16b = Math.min(best.bf16b, await load(g2, path, 'bf16'));
      best.q8b = Math.min(best.q8b, await load(g2, path, 'q8'));
      best.pack = Math.min(best.pack, await packKernelMs(g, 64 << 20, 2));
      best.host = Math.min(best.host, hostQuantMs(64 << 20));
    }
    g.destroy();
    g2.destroy();
    g = await Gpu.create({ dawnFlags: ['backend=null'], upload: mode });
    g2 = await Gpu.create({ dawnFlags: ['backend=null'], upload: other });
    for (let r = 0; r < ROUNDS; r++) {
      best.raw = Math.min(best.raw, await rawRead(path));
      nul.bf16 = Math.min(nul.bf16, await load(g, path, 'bf16', true));
      nul.q8 = Math.min(nul.q8, await load(g, path, 'q8', true));
      nul.bf16b = Math.min(nul.bf16b, await load(g2, path, 'bf16', true));
      nul.q8b = Math.min(nul.q8b, await load(g2, path, 'q8', true));
    }
    const raw = mbs(best.raw);
    const row = (what: string, v: number, note = `${((100 * v) / raw).toFixed(0).padStart(3)} % of raw`) =>
      console.log(`  ${what.padEnd(60)}${v.toFixed(0).padStart(6)} MB/s  ${note}`);
    row(`raw read, 4 MiB reused buffer (best of ${2 * ROUNDS})`, raw, '100 % (the ceiling)');
    row('raw read into fresh memory (readFile)', rawFresh);
    row('fresh host memory, first write', fresh, "(page faults; lavapipe's GPU memory is host memory)");
    row(`load bf16 into new GPU buffers ('${mode}')`, first.bf16);
    row(`load q8   into new GPU buffers ('${mode}')`, first.q8);
    row(`load bf16 into reused GPU buffers ('${mode}', best of ${ROUNDS})`, mbs(best.bf16));
    row(`load q8   into reused GPU buffers ('${mode}', best of ${ROUNDS})`, mbs(best.q8));
    row(`load bf16 into reused GPU buffers ('${other}', best of ${ROUNDS})`, mbs(best.bf16b));
    row(`load q8   into reused GPU buffers ('${other}', best of ${ROUNDS})`, mbs(best.q8b));
    // CPU adapters: the GPU work runs on the same cores, so CPU time / cores bounds the wall time from below
    const cores = availableParallelism();
    row(`q8 load ('${mode}'): ${(best.q8cpu / size * 1e6).toFixed(2)} CPU-s per GB, at best on ${cores} idle cores`, mbs(best.q8cpu / cores));
    const packMBs = (64 << 20) / best.pack / 1e3, hostMBs = (64 << 20) / best.host / 1e3;
    row(`q8 pack kernel alone, 64 MiB of bf16 (best of ${2 * ROUNDS})`, packMBs, `${((100 * packMBs) / raw).toFixed(0).padStart(3)} % of raw; ${((100 * (size / packMBs / 1e3)) / best.q8).toFixed(0)} % of the q8 load's time`);
    row(`q8 host quantizer alone, one thread (best of ${ROUNDS})`, hostMBs);
    row(`Null backend: load bf16, host side ('${mode}')`, mbs(nul.bf16));
    row(`Null backend: load q8, host side ('${mode}')`, mbs(nul.q8));
    row(`Null backend: load bf16, host side ('${other}')`, mbs(nul.bf16b));
    row(`Null backend: load q8, host side ('${other}')`, mbs(nul.q8b));
  } finally {
    g.destroy();
    g2.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('load-bench.js')) {
  const i = process.argv.indexOf('--mb');
  benchLoading(i > 0 ? Number(process.argv[i + 1]) * 1e6 : 1e9).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}

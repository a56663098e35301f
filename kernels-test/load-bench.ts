/**
 * Loading throughput (part of `npm run bench`; alone: `node dist/kernels-test/load-bench.js [--mb N]`).
 *
 * Writes a DiT-like bf16 checkpoint of about 1 GB (blocks of qkv [9216, 3072], proj [3072, 3072],
 * mlp [12288, 3072] / [3072, 12288] weights with their biases) into a temp directory, deleted afterwards,
 * reads it once so that the page cache is warm for every row, then prints in one run:
 *   raw read        sequential `FileHandle.read` of the file into one reused 8 MiB buffer, best of three
 *                   (the ceiling every ratio is taken against); and `readFile` into fresh memory
 *   fresh memory    first write of newly allocated host memory (page faults; lavapipe's GPU memory is host
 *                   memory, so this bounds any load into new GPU buffers on the same machine)
 *   load bf16 / q8  the real load path (`loadLinearWeight` / `loadWeight`, as `Linear.load` calls them) into
 *                   GPU buffers, until the GPU has them (`g.sync()`): into new buffers, then (best of three,
 *                   like the raw read) into the buffers the first load freed (kept by the pool), which is the
 *                   loader's own speed
 * with MB/s (of checkpoint bytes) and the ratio to the raw read.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gpu } from '../src/runtime/gpu.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { buildHeader, type HeaderEntry } from '../src/io/safetensors.js';
import { loadLinearWeight, setWeightPolicy, type Weight, type WeightsOption } from '../src/nn/weight.js';
import { loadWeight } from '../src/nn/weights.js';
import type { Tensor } from '../src/runtime/tensor.js';

const CHUNK = 8 << 20;

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
async function writeCheckpoint(path: string, targetBytes: number): Promise<number> {
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

/** ms to load every tensor under `weights` and have it on the GPU; the tensors are freed (into the pool). */
async function load(g: Gpu, path: string, weights: WeightsOption): Promise<number> {
  const ck = await Checkpoint.open(path);
  setWeightPolicy(ck, { weights });
  const held: (Weight | Tensor)[] = [];
  try {
    const t0 = performance.now();
    for (const k of ck.keys()) held.push(k.endsWith('.weight') ? await loadLinearWeight(g, ck, k) : await loadWeight(g, ck, k));
    await g.sync();
    return performance.now() - t0;
  } finally {
    for (const h of held) h.dispose();
    g.flush();
    await ck.close();
  }
}

export async function benchLoading(targetBytes = 1e9): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-load-bench-'));
  const g = await Gpu.create();
  g.pool.maxCachedBytes = 4 * targetBytes; // keep the first load's buffers for the second
  try {
    const path = join(dir, 'dit-like.safetensors');
    const size = await writeCheckpoint(path, targetBytes);
    await rawRead(path); // warm the page cache
    const mbs = (ms: number) => size / ms / 1e3;
    // The ceiling: the best of three reads (other processes share the CPU; a slow read would flatter the ratios).
    const raw = mbs(Math.min(await rawRead(path), await rawRead(path), await rawRead(path)));
    const t0 = performance.now();
    await readFile(path); // into fresh memory (dropped at once): the same page faults as new buffers
    const rawFresh = mbs(performance.now() - t0);
    const d = g.describe();
    console.log(`loading: ${(size / 1e9).toFixed(2)} GB bf16 checkpoint (page cache warm), device ${d.vendor} ${d.description}`);
    console.log(`  raw read, 8 MiB reused buffer (best of 3)  ${raw.toFixed(0).padStart(6)} MB/s`);
    console.log(`  raw read into fresh memory (readFile)      ${rawFresh.toFixed(0).padStart(6)} MB/s  ${((100 * rawFresh) / raw).toFixed(0).padStart(3)} % of raw`);
    console.log(`  fresh host memory, first write             ${freshMemoryMBs(256 << 20).toFixed(0).padStart(6)} MB/s  (page faults; lavapipe's GPU memory is host memory)`);
    for (const w of ['bf16', 'q8'] as const)
      for (const into of ['new GPU buffers', 'reused GPU buffers (best of 3)']) {
        // New buffers: the first load only. Reused: best of three, as the raw read.
        let ms = await load(g, path, w);
        if (into.startsWith('reused')) ms = Math.min(await load(g, path, w), await load(g, path, w), await load(g, path, w));
        const v = mbs(ms);
        console.log(`  load ${w.padEnd(4)} into ${into.padEnd(30)}${v.toFixed(0).padStart(6)} MB/s  ${((100 * v) / raw).toFixed(0).padStart(3)} % of raw`);
      }
  } finally {
    g.destroy();
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

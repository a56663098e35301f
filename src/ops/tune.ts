/**
 * GEMM autotune: time candidate tiles of the planned kernel (subgroup-matrix or workgroup) on the actual
 * device for the model's main shapes and cache the winners per adapter + driver + shape class in the
 * user cache directory (`$XDG_CACHE_HOME/step1x/tune.json`, default ~/.cache; STEP1X_TUNE_CACHE
 * overrides the file). `step1x tune` runs it; a Gpu created with `tiles: tuneCacheTiles` (the CLI's) loads
 * the cache on its first plan, so a tuned
 * plan is reused by every later run on that adapter and driver.
 *
 * Shape class: M, N and K each bucketed by powers of 4 (ceil(log4)), so 17664 and 8192 rows share a
 * class but a 1024-token Qwen prefill does not share one with the DiT. Timing: one warm-up dispatch
 * (pipeline compile), then the minimum of `reps` synced runs.
 */
import { closeSync, constants, fstatSync, mkdirSync, openSync, readSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { ExitCode, Step1xError } from '../errors.js';
import { homedir } from 'node:os';
import { basename, dirname, isAbsolute, join } from 'node:path';
import type { Gpu } from '../runtime/gpu.js';
import type { DType } from '../runtime/tensor.js';
import { linear } from './linear.js';
import {
  planGemm, setTunedTiles, sgmatFits, wgFits, gemmConfig, defaultSgmatTiles, sgmatTileOf, DEFAULT_WG_TILE,
  type GemmKind, type GemmShape, type SgmatTile, type WgTile,
} from './plan-gemm.js';

export type Tile = SgmatTile | WgTile;

export function tuneCachePath(): string {
  if (process.env.STEP1X_TUNE_CACHE) return process.env.STEP1X_TUNE_CACHE;
  // the XDG spec: a relative XDG_CACHE_HOME is invalid and ignored
  const x = process.env.XDG_CACHE_HOME;
  return join(x && isAbsolute(x) ? x : join(homedir(), '.cache'), 'step1x', 'tune.json');
}

/** Adapter + driver identity: the description carries the driver version on Vulkan (e.g. "Mesa 26.1.6"). */
export function adapterKey(g: Gpu): string {
  const c = g.caps;
  return [c.vendor, c.architecture, c.description].join('|');
}

const bucket = (v: number): number => Math.ceil(Math.log(Math.max(v, 1)) / Math.log(4));
export function shapeClass(kind: GemmKind, s: GemmShape): string {
  return `${kind}:M${bucket(s.M)}:N${bucket(s.N)}:K${bucket(s.K)}:${s.wdt}`;
}

type CacheFile = Record<string, Record<string, unknown>>;

/** A real cache holds a few adapters × ~10 classes: anything bigger is not ours. */
const MAX_CACHE_BYTES = 4 << 20;

/**
 * The cache is data, not trust. `foreign`: the file exists but is not a tune cache (not a regular file,
 * too big, not a JSON object of objects); it is then neither used nor overwritten.
 */
function readCache(): { data: CacheFile; foreign?: string } {
  const p = tuneCachePath();
  let st;
  try {
    st = statSync(p);
  } catch {
    return { data: {} };
  }
  // type and size before opening: a FIFO would block, /dev/zero never ends
  if (!st.isFile()) return { data: {}, foreign: 'not a regular file' };
  if (st.size > MAX_CACHE_BYTES) return { data: {}, foreign: `${st.size} bytes, more than a tune cache has` };
  let j: unknown;
  try {
    const fd = openSync(p, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const buf = Buffer.alloc(Math.min(fstatSync(fd).size, MAX_CACHE_BYTES));
      readSync(fd, buf, 0, buf.length, 0);
      j = JSON.parse(buf.toString('utf8'));
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    return { data: {}, foreign: `not JSON (${(e as Error).message})` };
  }
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
  if (!isObj(j) || !Object.values(j).every(isObj)) return { data: {}, foreign: 'not a JSON object of adapters' };
  return { data: j as CacheFile };
}

function writeCache(c: CacheFile): void {
  const p = tuneCachePath();
  mkdirSync(dirname(p), { recursive: true });
  const tmp = join(dirname(p), `.${basename(p)}.${process.pid}-${Math.random().toString(16).slice(2, 10)}.tmp`);
  try {
    writeFileSync(tmp, JSON.stringify(c, null, 1) + '\n', { flag: 'wx' });
    renameSync(tmp, p); // never a half-written cache
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw e;
  }
}

const warned = new Set<string>();
function warnOnce(m: string): void {
  if (warned.has(m)) return;
  warned.add(m);
  process.stderr.write(`step1x: warning: ${m}\n`);
}

/** Install the cached tiles of this adapter (if any) on g; returns how many classes were loaded. */
export function loadTuned(g: Gpu): number {
  const { data, foreign } = readCache();
  const where = JSON.stringify(tuneCachePath()).slice(1, -1).replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  if (foreign) warnOnce(`tune cache ${where} ignored: ${foreign}`);
  const entries = data[adapterKey(g)] ?? {};
  // Only a tile this step1x could have written: one of the candidates for its kind on this device (a
  // `null`, `bk: 0` or huge tile would reach the kernels as a Dawn validation error).
  const allowed = {
    sgmat: g.caps.matrixConfigs.length ? candidates(g, 'subgroup-matrix', 'f16').map((t) => tileKey(t, SG_KEYS)) : [],
    wg: candidates(g, 'workgroup').map((t) => tileKey(t, WG_KEYS)),
  };
  const valid: [string, Tile][] = [];
  for (const [k, t] of Object.entries(entries)) {
    const sg = k.startsWith('subgroup-matrix:');
    const ok = !!t && typeof t === 'object' && (sg ? isSgmatTile(t as Tile) && allowed.sgmat.includes(tileKey(t as Tile, SG_KEYS)) && sgmatOk(g, t as SgmatTile) : isWgTile(t as Tile) && allowed.wg.includes(tileKey(t as Tile, WG_KEYS)) && wgFits(g.caps, t as WgTile));
    if (ok) valid.push([k, t as Tile]);
    else warnOnce(`tune cache ${where}: entry "${k.replace(/[^\x20-\x7e]/g, '?').slice(0, 80)}" ignored (${JSON.stringify(t)?.slice(0, 80)} is not a tile for this device); run "step1x tune" to replace it`);
  }
  const map = new Map(valid);
  setTunedTiles(g, map.size ? { lookup: (kind, s) => map.get(shapeClass(kind, s)) } : undefined);
  return map.size;
}

// res: the config's result type (f16→f16 on Metal); adirect: false keeps f16 x staged (absent in caches written
// before it existed, which thus stay valid and mean the default: A from storage where the layout allows)
const SG_KEYS = ['sgm', 'sgn', 'pm', 'pn', 'bk', 'res', 'adirect'] as const;
const WG_KEYS = ['bm', 'bn', 'bk', 'tm', 'tn'] as const;
/** A tile's fields in a fixed order (a cache entry may list them in any order). */
const tileKey = (t: Tile, keys: readonly string[]) => JSON.stringify(Object.fromEntries(keys.map((k) => [k, (t as unknown as Record<string, number>)[k]])));
const isSgmatTile = (t: Tile): t is SgmatTile =>
  ['sgm', 'sgn', 'pm', 'pn', 'bk'].every((k) => Number.isInteger((t as unknown as Record<string, number>)[k])) && [undefined, 'f32', 'f16'].includes((t as SgmatTile).res) &&
  [undefined, false].includes((t as SgmatTile).adirect);
const isWgTile = (t: Tile): t is WgTile => ['bm', 'bn', 'bk', 'tm', 'tn'].every((k) => Number.isInteger((t as unknown as Record<string, number>)[k]));
const sgmatOk = (g: Gpu, t: SgmatTile): boolean => {
  const cfg = gemmConfig(g.caps, t.res);
  return !!cfg && sgmatFits(g.caps, cfg, t);
};

/**
 * Candidate tiles for a kind, filtered by the device's limits; the plan's default first. Subgroup-matrix:
 * the default list (128x128 on GPUs), 256x128 and 128x256, then the historical grid of small tiles; for f16
 * x (`xdt`) each also with A staged (`adirect: false`) next to the default A-from-storage plan.
 */
export function candidates(g: Gpu, kind: GemmKind, xdt: DType = 'f32'): Tile[] {
  if (kind === 'subgroup-matrix') {
    const cfg = gemmConfig(g.caps);
    if (!cfg) return [];
    const out: (SgmatTile | null)[] = [...defaultSgmatTiles(g.caps, cfg)];
    for (const bk of [32, 16]) out.push(sgmatTileOf(cfg, 256, 128, 4, 2, bk), sgmatTileOf(cfg, 128, 256, 2, 4, bk), sgmatTileOf(cfg, 256, 128, 4, 4, bk));
    for (const [sgm, sgn] of [[2, 2], [2, 4], [4, 2], [1, 1]])
      for (const [pm, pn] of [[2, 2], [4, 2], [2, 4], [4, 4]])
        for (const bk of [32, 64]) out.push({ sgm, sgn, pm, pn, bk });
    const seen = new Set<string>();
    const fit = out.filter((t): t is SgmatTile => !!t && sgmatFits(g.caps, cfg, t) && !seen.has(JSON.stringify(t)) && !!seen.add(JSON.stringify(t)));
    return xdt === 'f16' ? fit.flatMap((t) => [t, { ...t, adirect: false as const }]) : fit;
  }
  const out: WgTile[] = [DEFAULT_WG_TILE, { bm: 32, bn: 64, bk: 16, tm: 2, tn: 4 }, { bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 }, { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 }, { bm: 32, bn: 32, bk: 16, tm: 2, tn: 2 }];
  return out.filter((t) => wgFits(g.caps, t));
}

export interface TuneResult {
  shape: GemmShape;
  cls: string;
  kind: GemmKind;
  best: Tile;
  ms: number;
  /** ms per candidate, in candidate order. */
  tried: { tile: Tile; ms: number }[];
}

async function timeTile(g: Gpu, s: GemmShape, kind: GemmKind, t: Tile, reps: number): Promise<number> {
  setTunedTiles(g, { lookup: (k) => (k === kind ? t : undefined) });
  const x = g.empty([s.M, s.K], s.xdt === 'f16' ? 'f16' : 'f32', 'tune x');
  const w = g.empty([s.N, s.K], s.wdt, 'tune w'); // contents do not matter for timing
  const out = g.empty([s.M, s.N], 'f32', 'tune out');
  try {
    linear(x, w, undefined, { out });
    await g.sync();
    let best = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      linear(x, w, undefined, { out });
      await g.sync();
      best = Math.min(best, performance.now() - t0);
    }
    return best;
  } finally {
    for (const tt of [x, w, out]) tt.dispose();
  }
}

/**
 * Tune the planned GEMM kind of each shape (skipping shapes on the register path) and merge the winners
 * into the cache. `log` gets one line per shape.
 */
export async function tune(g: Gpu, shapes: GemmShape[], opts: { reps?: number; log?: (m: string) => void; maxCandidates?: number } = {}): Promise<TuneResult[]> {
  const log = opts.log ?? (() => {});
  const results: TuneResult[] = [];
  const { data: cache, foreign } = readCache();
  if (foreign) throw new Step1xError(`tune cache ${tuneCachePath()} is ${foreign}: not a step1x tune cache, refusing to overwrite it (remove it, or set STEP1X_TUNE_CACHE to another file)`, ExitCode.OUTPUT);
  const mine = (cache[adapterKey(g)] ??= {});
  try {
    for (const s of shapes) {
      setTunedTiles(g, undefined);
      const plan = planGemm(g, s);
      if (!plan) {
        log(`tune: M=${s.M} K=${s.K} N=${s.N}: register path (nothing to tune)`);
        continue;
      }
      const cls = shapeClass(plan.kind, s);
      if (results.some((r) => r.cls === cls)) continue; // one timing per class per run
      const tried: { tile: Tile; ms: number }[] = [];
      for (const t of candidates(g, plan.kind, s.xdt).slice(0, opts.maxCandidates)) tried.push({ tile: t, ms: await timeTile(g, s, plan.kind, t, opts.reps ?? 2) });
      const best = tried.reduce((a, b) => (b.ms < a.ms ? b : a));
      mine[cls] = best.tile;
      results.push({ shape: s, cls, kind: plan.kind, best: best.tile, ms: best.ms, tried });
      log(`tune: M=${s.M} K=${s.K} N=${s.N} ${plan.kind}: best ${JSON.stringify(best.tile)} ${best.ms.toFixed(2)} ms (default ${tried[0].ms.toFixed(2)} ms, ${tried.length} tiles)`);
    }
  } finally {
    setTunedTiles(g, undefined);
  }
  writeCache(cache);
  loadTuned(g);
  return results;
}

/**
 * The main GEMM shapes of a size (DiT at CFG batch 2, Qwen2.5-VL prefill, VAE attention), capped at maxDim;
 * `ditX`: the DiT's activation storage (f16 where the device stores activations in f16: its GEMMs then read A
 * straight from storage, and the tuner times both).
 */
export function modelShapes(size: number, maxDim = 0, wdt: DType = 'bf16', ditX: DType = 'f32'): GemmShape[] {
  const img = (size / 16) ** 2; // DiT tokens per image (VAE /8, patch 2)
  const cap = (v: number) => (maxDim > 0 ? Math.min(v, maxDim) : v);
  const M = 2 * (2 * img + 640);
  const list: [number, number, number][] = [
    [M, 3072, 9216], [M, 3072, 12288], [M, 3072, 21504], [M, 3072, 3072], [M, 12288, 3072],
    [1024, 3584, 18944], [1024, 18944, 3584], [(size / 8) ** 2 / 4, 512, 512],
  ];
  return list.map(([m, k, n], i) => ({ M: cap(m), K: cap(k), N: cap(n), wdt, ...(i < 5 && ditX === 'f16' ? { xdt: ditX } : {}) }));
}

let noticed = false;
/**
 * The tuned tiles of the tune cache, as a Gpu.create `tiles` loader (the CLI passes it; a Gpu created
 * without it plans with the default tiles). Says once per process how to tune a GPU that has none cached.
 */
export function tuneCacheTiles(g: Gpu): void {
  const n = loadTuned(g);
  if (n && process.env.STEP1X_DEBUG) process.stderr.write(`step1x: ${n} tuned GEMM tile classes loaded from ${tuneCachePath()}\n`);
  // A GPU with a tunable family and no cached tiles: say once how to tune (defaults are used meanwhile).
  if (!n && !noticed && !g.caps.cpu && g.kernels !== 'register' && process.env.STEP1X_TUNE_NOTICE !== '0') {
    noticed = true;
    process.stderr.write(`step1x: note: no tuned ${g.kernels} tiles for this GPU yet (default tiles used); run "step1x tune" once to time and cache them\n`);
  }
}

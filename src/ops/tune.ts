/**
 * GEMM autotune: time candidate tiles of the planned kernel (subgroup-matrix or workgroup) on the actual
 * device for the model's main shapes and cache the winners per adapter + driver + shape class in the
 * user cache directory (`$XDG_CACHE_HOME/step1x/tune.json`, default ~/.cache; STEP1X_TUNE_CACHE
 * overrides the file). `step1x tune` runs it; planGemm() loads the cache once per device, so a tuned
 * plan is reused by every later run on that adapter and driver.
 *
 * Shape class: M, N and K each bucketed by powers of 4 (ceil(log4)), so 17664 and 8192 rows share a
 * class but a 1024-token Qwen prefill does not share one with the DiT. Timing: one warm-up dispatch
 * (pipeline compile), then the minimum of `reps` synced runs.
 */
import { mkdirSync, readFileSync, writeFileSync, renameSync, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Gpu } from '../runtime/gpu.js';
import type { DType } from '../runtime/tensor.js';
import { linear } from './linear.js';
import {
  planGemm, setTunedTiles, registerTuneLoader, sgmatFits, wgFits, gemmConfig, defaultSgmatTiles, sgmatTileOf, DEFAULT_WG_TILE,
  type GemmKind, type GemmShape, type SgmatTile, type WgTile,
} from './plan-gemm.js';

export type Tile = SgmatTile | WgTile;

export function tuneCachePath(): string {
  if (process.env.STEP1X_TUNE_CACHE) return process.env.STEP1X_TUNE_CACHE;
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'step1x', 'tune.json');
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

type CacheFile = Record<string, Record<string, Tile>>;

function readCache(): CacheFile {
  const p = tuneCachePath();
  if (!existsSync(p)) return {};
  try {
    const j = JSON.parse(readFileSync(p, 'utf8'));
    return j && typeof j === 'object' ? (j as CacheFile) : {};
  } catch {
    return {}; // a corrupt cache is ignored (and rewritten by the next tune)
  }
}

function writeCache(c: CacheFile): void {
  const p = tuneCachePath();
  mkdirSync(dirname(p), { recursive: true });
  const tmp = `${p}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(c, null, 1) + '\n');
  renameSync(tmp, p); // never a half-written cache
}

/** Install the cached tiles of this adapter (if any) on g; returns how many classes were loaded. */
export function loadTuned(g: Gpu): number {
  const entries = readCache()[adapterKey(g)] ?? {};
  const valid = Object.entries(entries).filter(([k, t]) => (k.startsWith('subgroup-matrix:') ? isSgmatTile(t) && sgmatOk(g, t) : isWgTile(t) && wgFits(g.caps, t)));
  const map = new Map(valid);
  setTunedTiles(g, map.size ? { lookup: (kind, s) => map.get(shapeClass(kind, s)) } : undefined);
  return map.size;
}

const isSgmatTile = (t: Tile): t is SgmatTile =>
  ['sgm', 'sgn', 'pm', 'pn', 'bk'].every((k) => Number.isInteger((t as unknown as Record<string, number>)[k])) && [undefined, 'f32', 'f16'].includes((t as SgmatTile).res);
const isWgTile = (t: Tile): t is WgTile => ['bm', 'bn', 'bk', 'tm', 'tn'].every((k) => Number.isInteger((t as unknown as Record<string, number>)[k]));
const sgmatOk = (g: Gpu, t: SgmatTile): boolean => {
  const cfg = gemmConfig(g.caps, t.res);
  return !!cfg && sgmatFits(g.caps, cfg, t);
};

/**
 * Candidate tiles for a kind, filtered by the device's limits; the plan's default first. Subgroup-matrix:
 * the default list (128x128 on GPUs), 256x128 and 128x256, then the historical grid of small tiles.
 */
export function candidates(g: Gpu, kind: GemmKind): Tile[] {
  if (kind === 'subgroup-matrix') {
    const cfg = gemmConfig(g.caps);
    if (!cfg) return [];
    const out: (SgmatTile | null)[] = [...defaultSgmatTiles(g.caps, cfg)];
    for (const bk of [32, 16]) out.push(sgmatTileOf(cfg, 256, 128, 4, 2, bk), sgmatTileOf(cfg, 128, 256, 2, 4, bk), sgmatTileOf(cfg, 256, 128, 4, 4, bk));
    for (const [sgm, sgn] of [[2, 2], [2, 4], [4, 2], [1, 1]])
      for (const [pm, pn] of [[2, 2], [4, 2], [2, 4], [4, 4]])
        for (const bk of [32, 64]) out.push({ sgm, sgn, pm, pn, bk });
    const seen = new Set<string>();
    return out.filter((t): t is SgmatTile => !!t && sgmatFits(g.caps, cfg, t) && !seen.has(JSON.stringify(t)) && !!seen.add(JSON.stringify(t)));
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
  const x = g.empty([s.M, s.K], 'f32', 'tune x');
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
  const cache = readCache();
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
      for (const t of candidates(g, plan.kind).slice(0, opts.maxCandidates)) tried.push({ tile: t, ms: await timeTile(g, s, plan.kind, t, opts.reps ?? 2) });
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

/** The main GEMM shapes of a size (DiT at CFG batch 2, Qwen2.5-VL prefill, VAE attention), capped at maxDim. */
export function modelShapes(size: number, maxDim = 0, wdt: DType = 'bf16'): GemmShape[] {
  const img = (size / 16) ** 2; // DiT tokens per image (VAE /8, patch 2)
  const cap = (v: number) => (maxDim > 0 ? Math.min(v, maxDim) : v);
  const M = 2 * (2 * img + 640);
  const list: [number, number, number][] = [
    [M, 3072, 9216], [M, 3072, 12288], [M, 3072, 21504], [M, 3072, 3072], [M, 12288, 3072],
    [1024, 3584, 18944], [1024, 18944, 3584], [(size / 8) ** 2 / 4, 512, 512],
  ];
  return list.map(([m, k, n]) => ({ M: cap(m), K: cap(k), N: cap(n), wdt }));
}

let noticed = false;
registerTuneLoader((g) => {
  const n = loadTuned(g);
  if (n && process.env.STEP1X_DEBUG) process.stderr.write(`step1x: ${n} tuned GEMM tile classes loaded from ${tuneCachePath()}\n`);
  // A GPU with a tunable family and no cached tiles: say once how to tune (defaults are used meanwhile).
  if (!n && !noticed && !g.caps.cpu && g.kernels !== 'register' && process.env.STEP1X_TUNE_NOTICE !== '0') {
    noticed = true;
    process.stderr.write(`step1x: note: no tuned ${g.kernels} tiles for this GPU yet (default tiles used); run "step1x tune" once to time and cache them\n`);
  }
});

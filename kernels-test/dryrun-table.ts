/**
 * The dry-run table (README "Dry run"): `step1x edit` at real size on header-only fakes of the real v1.1
 * model directory, on every device profile × size level × weight format × budget, one child process per
 * cell with STEP1X_DRYRUN=<profile> and --json. Prints a markdown table of the counts the issue asks for:
 * buffers created per DiT step after the first, bind groups per dispatch, peak co-existing bytes (pending
 * frees included) against the plan's peak and the budget, and the global-memory traffic of one DiT step
 * next to the same cell's before issue 19 (TRAFFIC_BEFORE_GB).
 *   npm run dryrun                         the standard table (28 steps)
 *   node dist/kernels-test/dryrun-table.js [steps] [profiles,…] [sizes,…]
 * The fakes are sparse files (a few MB on disk) built from test/golden/real_shapes*; STEP1X_DRYRUN_MODEL
 * names an existing directory to use instead.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { shapesJsonEntries } from '../src/io/checkpoint.js';
import { writeFakeShardedQwen, writeHeaderOnlyFake } from '../test/util/fake-checkpoint.js';
import type { DryRunReport } from '../src/runtime/dryrun/recorder.js';

const here = dirname(fileURLToPath(import.meta.url)); // kernels-test/ or dist/kernels-test/
const ROOT = [resolve(here, '..'), resolve(here, '../..')].find((d) => existsSync(join(d, 'test/golden/real_shapes')))!;

/** Header-only fake of the real official-layout v1.1 directory, with the test model's tokenizer (the fake Qwen config is the real one). */
export async function writeDryRunModel(dir: string): Promise<string> {
  const rs = join(ROOT, 'test/golden/real_shapes'), rq = join(ROOT, 'test/golden/real_shapes_qwen');
  const tok = join(ROOT, 'test/golden/tiny_e2e/model/Qwen2.5-VL-7B-Instruct');
  mkdirSync(dir, { recursive: true });
  const dit = (await shapesJsonEntries(join(rs, 'dit_step1x-edit-i1258.json'))).filter((e) => e.name !== 'connector.scale_factor').map((e) => ({ ...e, dtype: 'BF16' as const }));
  await writeHeaderOnlyFake(join(dir, 'step1x-edit-v1p1-official.safetensors'), dit);
  await writeHeaderOnlyFake(join(dir, 'vae.safetensors'), await shapesJsonEntries(join(rs, 'vae.json')));
  const q = join(dir, 'Qwen2.5-VL-7B-Instruct');
  await writeFakeShardedQwen(q, await shapesJsonEntries(join(rq, 'params.json')));
  for (const f of ['config.json', 'preprocessor_config.json', 'chat_template.json']) copyFileSync(join(rq, f), join(q, f));
  for (const f of ['tokenizer.json.gz', 'tokenizer_config.json']) copyFileSync(join(tok, f), join(q, f));
  return dir;
}

/** A square gray PNG (the working size is then size_level² exactly). */
export function writeSquarePng(path: string, side = 64): string {
  const png = new PNG({ width: side, height: side });
  png.data.fill(128);
  writeFileSync(path, PNG.sync.write(png));
  return path;
}

export interface Cell {
  profile: string;
  size: number;
  weights: 'bf16' | 'q8' | 'q4';
  budget?: string;
}

/** One dry run through the CLI; the report, or the one-line error the CLI gave. */
export function runCell(model: string, image: string, c: Cell, steps: number, out: string): { report?: DryRunReport; error?: string; code: number | null } {
  const args = [join(ROOT, 'bin/step1x.js'), 'edit', image, 'make it blue', '-o', out, '--model', model, '--size', String(c.size), '--steps', String(steps), '--weights', c.weights, '--json', '--quiet'];
  if (c.budget) args.push('--vram-budget', c.budget);
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, STEP1X_DRYRUN: c.profile }, timeout: 1_800_000 });
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  if (r.status !== 0 || !line) return { code: r.status, error: (r.stderr.split('\n').find((l) => l.startsWith('step1x: error')) ?? r.stderr.slice(-300)).trim() };
  return { code: 0, report: JSON.parse(line).dryrun };
}

const gb = (b: number | null | undefined) => (b == null ? 'n/a' : (b / 1e9).toFixed(1));

/**
 * Global-memory traffic per DiT step (GB, `dryrun.traffic.total_bytes`, step 2) of the same cell before
 * issue 19's f16 / fusion / tile-group work: main at 80f2fda with this traffic model (runtime/dryrun/
 * traffic.ts) added and nothing else changed, measured once per cell (2 steps; step 2 is the same
 * dispatch sequence at any step count); 1024² on the GPU profiles (the cells the issue names), other cells n/a.
 * The table prints it next to today's; the issue asks at most half.
 */
export const TRAFFIC_BEFORE_GB: Record<string, number> = {
  'h100 1024 bf16': 2214.0, 'h100 1024 q8': 2102.0, 'h100 1024 q4': 2042.3,
  'rtx4090 1024 bf16': 2214.0, 'rtx4090 1024 q8': 2102.0, 'rtx4090 1024 q4': 2042.3,
  'm2max 1024 bf16': 2214.0, 'm2max 1024 q8': 2102.0, 'm2max 1024 q4': 2042.3,
  'rdna3 1024 bf16': 2214.0, 'rdna3 1024 q8': 2102.0, 'rdna3 1024 q4': 2042.3,
  'xe2 1024 bf16': 2214.0, 'xe2 1024 q8': 2102.0, 'xe2 1024 q4': 2042.3,
};

export function trafficCells(c: Cell, d: DryRunReport): string {
  const now = d.traffic ? d.traffic.total_bytes / 1e9 : NaN;
  const before = TRAFFIC_BEFORE_GB[`${c.profile} ${c.size} ${c.weights}`];
  return `${now.toFixed(1)} | ${before === undefined ? 'n/a' : before.toFixed(1)} | ${before === undefined ? 'n/a' : (now / before).toFixed(2)} |`;
}

export function tableRow(c: Cell, r: ReturnType<typeof runCell>): string {
  const name = `| ${c.profile} | ${c.size} | ${c.weights} | ${c.budget ?? '—'} |`;
  if (!r.report) return `${name} failed (exit ${r.code}): ${r.error} |`;
  const d = r.report;
  const later = d.steps.slice(1);
  const creates = later.reduce((s, t) => s + t.buffers_created, 0);
  const bgPct = later.length ? Math.max(...later.map((t) => (100 * t.bind_groups_created) / Math.max(1, t.dispatches))) : NaN;
  const s1 = d.steps[0];
  const limit = Math.min(d.memory_bytes, c.budget ? parseFloat(c.budget) * 1e9 : Infinity);
  const fits = d.peak_bytes <= limit && (d.plan_peak_bytes === null || d.peak_bytes <= d.plan_peak_bytes) ? 'yes' : d.peak_bytes > limit ? '**over memory**' : '**over plan**';
  return `${name} ${s1?.dispatches ?? 0} | ${s1?.buffers_created ?? 0} | ${creates} | ${bgPct.toFixed(1)} % | ${gb(d.peak_bytes)} | ${gb(d.plan_peak_bytes)} | ${fits} | ${trafficCells(c, d)}`;
}

async function main(): Promise<void> {
  const steps = Number(process.argv[2] ?? 28);
  const profiles = (process.argv[3] ?? 'h100,rtx4090,m2max,rdna3,xe2,lavapipe').split(',');
  const sizes = (process.argv[4] ?? '512,1024').split(',').map(Number);
  const tmp = mkdtempSync(join(tmpdir(), 'step1x-dryrun-'));
  try {
    const model = process.env.STEP1X_DRYRUN_MODEL ?? (await writeDryRunModel(join(tmp, 'model')));
    const image = writeSquarePng(join(tmp, 'in.png'));
    const budgets: Record<Cell['weights'], (string | undefined)[]> = { bf16: [undefined], q8: [undefined, '24GB'], q4: [undefined, '16GB'] };
    process.stdout.write(`dry run of \`step1x edit\`, v1.1, ${steps} steps (GB = 1e9 bytes; steps 2..${steps} summed/maxed)\n\n`);
    process.stdout.write('| profile | size | weights | budget | dispatches step 1 | buffers created step 1 | buffers created steps 2.. | bind groups / dispatch (max, steps 2..) | peak GB | plan peak GB | peak ≤ plan, budget, memory | traffic GB / DiT step | before (main 80f2fda) | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n');
    for (const profile of profiles)
      for (const size of sizes)
        for (const weights of ['bf16', 'q8', 'q4'] as const)
          for (const budget of budgets[weights]) {
            const c: Cell = { profile, size, weights, budget };
            process.stdout.write(tableRow(c, runCell(model, image, c, steps, join(tmp, 'out.png'))) + '\n');
          }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();

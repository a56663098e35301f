/**
 * The dry run: `STEP1X_DRYRUN=<profile>` makes the runtime open a device that does no GPU work but
 * answers like the named adapter (profiles.ts) and records dispatches, submits, syncs, bind groups,
 * buffers and the memory they would hold (recorder.ts). Weights are not read (nn/ loaders allocate
 * their buffers without touching the file), so header-only model directories run at real size.
 * `STEP1X_DRYRUN_INFLIGHT=<n>` sets how many submits the modelled GPU runs behind the host (default 2).
 */
import { ExitCode, Step1xError } from '../../errors.js';
import { PROFILE_IDS, profileById, type DeviceProfile } from './profiles.js';
import type { Counts, DryRunReport } from './recorder.js';

export { Recorder, type DryRunReport, type Counts, type KernelUse } from './recorder.js';
export { dryAdapter, recorderOf } from './mock.js';
export { PROFILES, PROFILE_IDS, profileById, type DeviceProfile } from './profiles.js';

/** The profile STEP1X_DRYRUN names, undefined when unset; an unknown id is a usage error. */
export function dryRunProfile(env: NodeJS.ProcessEnv = process.env): DeviceProfile | undefined {
  const id = env.STEP1X_DRYRUN;
  if (!id) return undefined;
  const p = profileById(id);
  if (!p) throw new Step1xError(`STEP1X_DRYRUN "${id}" is not one of ${PROFILE_IDS.join(', ')}`, ExitCode.USAGE);
  return p;
}

export function dryRunLag(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.STEP1X_DRYRUN_INFLIGHT;
  if (v === undefined) return 2;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Step1xError(`STEP1X_DRYRUN_INFLIGHT "${v}" must be a whole number >= 1`, ExitCode.USAGE);
  return n;
}

const gb = (b: number) => `${(b / 1e9).toFixed(2)} GB`;

function row(name: string, c: Counts): string {
  return [name.padEnd(10), c.dispatches, c.submits, c.syncs, c.bind_groups_created, c.buffers_created].map((v, i) => (i ? String(v).padStart(10) : v)).join('') +
    gb(c.bytes_allocated).padStart(12) + gb(c.peak_bytes).padStart(11);
}

/** The report as a table for stderr: per stage, first / second / last DiT step, main kernel shapes. */
export function formatDryRun(r: DryRunReport): string {
  const head = `${'stage'.padEnd(10)}${['dispatch', 'submits', 'syncs', 'bindgrps', 'buffers'].map((h) => h.padStart(10)).join('')}${'allocated'.padStart(12)}${'peak'.padStart(11)}`;
  const lines = [`dry run on ${r.profile} (${r.device}, ${gb(r.memory_bytes)}; GPU ${r.submits_in_flight} submits behind the host)`, head];
  for (const s of r.stages) lines.push(row(s.stage, s));
  const pick = [...new Set([0, 1, r.steps.length - 1])].filter((i) => i >= 0 && i < r.steps.length);
  for (const i of pick) lines.push(row(`  step ${r.steps[i].step}`, r.steps[i]));
  lines.push(`peak co-existing ${gb(r.peak_bytes)} (pending frees included); plan peak ${r.plan_peak_bytes === null ? 'n/a' : gb(r.plan_peak_bytes)}`);
  const main = new Map<string, (typeof r.kernels)[number]>();
  for (const k of r.kernels) if ((main.get(k.shape)?.dispatches ?? 0) < k.dispatches) main.set(k.shape, k);
  // the 12 most dispatched shapes, then every conv shape (few dispatches each, but the VAE's main work)
  const sorted = [...main.values()].sort((a, b) => b.dispatches - a.dispatches);
  const top = [...sorted.slice(0, 12), ...sorted.slice(12).filter((k) => k.shape.includes('.conv '))];
  for (const k of top) lines.push(`  ${k.shape.padEnd(40)} ${k.variant}${k.tile ? ` [${k.tile}]` : ''}${k.matrix_units ? ' (matrix units)' : ''} ×${k.dispatches}`);
  return lines.join('\n') + '\n';
}

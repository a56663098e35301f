// Sum the per-process dispatch counts that Gpu.destroy() appends to STEP1X_DISPATCH_LOG (one JSON line
// per process: {kernels, precision, files: {shader: count}}) and check them:
//   node scripts/dispatch-guard.mjs LOG --min FILE …   each FILE must have been dispatched at least once
//   node scripts/dispatch-guard.mjs LOG --none FILE …  no FILE may have been dispatched
// Prints the counts either way; exit 1 on a violated check (or an empty / missing log: never a silent pass).
import { readFileSync, existsSync } from 'node:fs';

const [log, mode, ...files] = process.argv.slice(2);
if (!log || !['--min', '--none'].includes(mode) || !files.length) {
  console.error('usage: dispatch-guard.mjs LOG --min|--none FILE...');
  process.exit(2);
}
const lines = existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : [];
if (!lines.length) {
  console.error(`dispatch guard: ${log} is empty or missing: no process recorded any dispatch`);
  process.exit(1);
}
const total = new Map();
for (const l of lines) for (const [f, n] of Object.entries(JSON.parse(l).files)) total.set(f, (total.get(f) ?? 0) + n);
const counts = files.map((f) => `${f} ${total.get(f) ?? 0}`).join(', ');
console.log(`dispatch guard: ${lines.length} processes; ${counts}`);
const bad = files.filter((f) => (mode === '--min' ? !(total.get(f) > 0) : (total.get(f) ?? 0) > 0));
if (bad.length) {
  console.error(`dispatch guard: ${mode === '--min' ? 'never dispatched' : 'dispatched although it must not be'}: ${bad.join(', ')}`);
  process.exit(1);
}

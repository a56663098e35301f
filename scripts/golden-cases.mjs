#!/usr/bin/env node
// Run several golden cases in one process on one runtime, as `step1x golden CASE [--kernels K] [--precision P]`
// runs one (same runner, same device options, same PASS/FAIL line per case):
//   node scripts/golden-cases.mjs [--kernels K] [--precision P] CASE-DIR...
// scripts/ci-sgmat.sh uses it for the golden phases: a process per case compiled every shared pipeline (DiT,
// VAE, Qwen kernels) again, case after case, on lavapipe (seconds per large shader). The runtime is shared as
// test/golden-strict.test.ts shares one across every case on the host. Every case runs; exit 1 when any
// failed, 2 on a usage error. STEP1X_DISPATCH_LOG gets this process's counts at the end (one line).
import { runGolden } from '../dist/src/golden/runner.js';
import { formatDetail } from '../dist/src/golden/compare.js';
import { gpuOptions } from '../dist/src/cli/gpu-options.js';
import { Gpu } from '../dist/src/runtime/gpu.js';

const args = process.argv.slice(2);
const o = {};
const cases = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--kernels' || args[i] === '--precision') o[args[i].slice(2)] = args[++i];
  else if (args[i].startsWith('--')) {
    console.error(`golden-cases: unknown option ${args[i]}`);
    process.exit(2);
  } else cases.push(args[i]);
}
if (!cases.length) {
  console.error('usage: golden-cases.mjs [--kernels K] [--precision P] CASE-DIR...');
  process.exit(2);
}

const gpu = await Gpu.create(gpuOptions(o));
const failed = [];
try {
  for (const c of cases) {
    try {
      const { report, details } = await runGolden(c, { gpu, log: (m) => process.stderr.write(`${m}\n`) });
      const compared = details.filter((d) => !d.skipped).length;
      const bad = details.filter((d) => !d.pass);
      const lines = details.map(formatDetail);
      lines.push(`${report.pass ? 'PASS' : 'FAIL'} ${report.case} (kind ${report.kind}): ${compared} compared, ${details.length - compared} skipped, ${bad.length} failed`);
      process.stdout.write(lines.join('\n') + '\n');
      if (!report.pass) failed.push(`${c}: ${bad.map((d) => d.name).slice(0, 8).join(', ')}`);
    } catch (e) {
      process.stdout.write(`step1x: error: golden ${c}: ${e instanceof Error ? e.message : String(e)}\n`);
      failed.push(`${c}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
} finally {
  gpu.destroy();
}
if (failed.length) {
  console.error(`golden-cases: ${failed.length} of ${cases.length} case(s) failed:\n  ${failed.join('\n  ')}`);
  process.exit(1);
}

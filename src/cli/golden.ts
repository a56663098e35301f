/**
 * `step1x golden <case-dir> [--json] [--dump FILE]`: run one golden reference case (see
 * ../shared/golden/README.md) and compare with its tolerances. Exit 0 all compared tensors pass,
 * 1 a mismatch, 2 a usage or input error (unknown kind, missing file, bad case) with a one-line message.
 * With --json, stdout is exactly one JSON object {case, kind, pass, tensors: [{name, maxAbs, relL2,
 * pass, skipped}]} and all logs go to stderr.
 */
import type { Command } from 'commander';
import { ExitCode, Step1xError } from '../errors.js';
import { runGolden } from '../golden/runner.js';
import { gpuOptions, type KernelCliOptions } from './gpu-options.js';
import { formatDetail } from '../golden/compare.js';
import { checkOutputPath } from '../pipeline/output.js';

export function register(program: Command): void {
  program
    .command('golden')
    .description('run a golden reference case and compare with its tolerances')
    .argument('<case-dir>', 'golden case directory (case.json, io.safetensors, weights)')
    .option('--json', 'print one JSON report object on stdout (logs on stderr)')
    .option('--dump <file>', 'write every computed tensor to this safetensors file')
    .action(async (caseDir: string, o: { json?: boolean; dump?: string } & KernelCliOptions) => {
      if (o.dump) checkOutputPath(o.dump); // a bad --dump path is found before the case runs
      let res;
      try {
        res = await runGolden(caseDir, { dump: o.dump, device: gpuOptions(o) });
      } catch (e) {
        // a case with missing or malformed files is an input error of this command (exit 2)
        if (e instanceof Step1xError && (e.code === ExitCode.WEIGHTS || e.code === ExitCode.INPUT)) throw new Step1xError(e.message, ExitCode.USAGE);
        throw e;
      }
      const { report, details } = res;
      if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
      else {
        const lines = details.map(formatDetail);
        const compared = details.filter((d) => !d.skipped).length, skipped = details.length - compared;
        lines.push(`${report.pass ? 'PASS' : 'FAIL'} ${report.case} (kind ${report.kind}): ${compared} compared, ${skipped} skipped, ${details.filter((d) => !d.pass).length} failed`);
        process.stdout.write(lines.join('\n') + '\n');
      }
      if (!report.pass) {
        const bad = details.filter((d) => !d.pass).map((d) => d.name);
        throw new Step1xError(`golden ${report.case}: ${bad.length} tensor(s) failed: ${bad.slice(0, 8).join(', ')}${bad.length > 8 ? ', ...' : ''}`, ExitCode.MISMATCH);
      }
    });
}

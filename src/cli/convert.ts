/**
 * `step1x convert --to q8|q4|fp8 IN OUT`: write a copy of a checkpoint with its Linear weights packed
 * (src/io/convert.ts; layout in src/io/quant-layout.ts). The result loads directly wherever the original
 * does (`--model` directories included, once it replaces the original file name) and `inspect` shows it.
 */
import type { Command } from 'commander';
import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { registerRunInput } from '../io/safe-write.js';
import { installInterruptCleanup } from '../pipeline/output.js';
import { ExitCode, Step1xError } from '../errors.js';
import { convertCheckpoint } from '../io/convert.js';
import { DIT_KEEP } from '../models/dit-config.js';
import { checkWritable } from './edit.js';
import { createReporter, fmtBytes } from './progress.js';

export function register(program: Command): void {
  program
    .command('convert')
    .description('pack the Linear weights of a checkpoint as q8 / q4 (int8 / int4 blocks of 32 along K, f16 scales) or fp8 (E4M3); other tensors are copied')
    .requiredOption('--to <format>', 'q8, q4 or fp8')
    .argument('<in>', 'checkpoint file or directory (safetensors)')
    .argument('<out>', 'output .safetensors file')
    .option('--quiet', 'no progress output')
    .action(async (input: string, output: string, o: { to: string; quiet?: boolean }) => {
      if (resolve(input) === resolve(output)) throw new Step1xError('convert: OUT must differ from IN', ExitCode.USAGE);
      installInterruptCleanup(); // an interrupted convert leaves no multi-GB temp behind
      // OUT may not be a file of IN under any name (a symlink from IN to OUT, a hard link, IN's directory)
      let files = [input];
      try {
        if (statSync(input).isDirectory()) files = readdirSync(input).map((n) => join(input, n));
      } catch {
        /* a missing IN is reported by the reader */
      }
      for (const f of files) registerRunInput(f, 'a file of the checkpoint being converted');
      checkWritable(output);
      const rep = createReporter({ quiet: o.quiet });
      try {
        // a DiT keeps its non-block weights with q8 / q4, exactly as --weights does (dit-config.ts DIT_KEEP)
        const keep = o.to === 'q8' || o.to === 'q4' ? (name: string, keys: string[]) => keys.includes('img_in.weight') && keys.includes('final_layer.linear.weight') && DIT_KEEP(name) : undefined;
        const r = await convertCheckpoint(input, output, o.to, { keep, onTensor: (i, n, name) => rep.update(`[${i + 1}/${n}] ${name}`) });
        rep.done(`wrote ${output}: ${r.packed} tensors as ${o.to}, ${r.kept} copied; ${fmtBytes(r.inBytes)} → ${fmtBytes(r.outBytes)}`);
      } finally {
        rep.stop();
      }
    });
}

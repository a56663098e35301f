/** `step1x download [DIR]`: fetch the model files resumably, with checksums and progress. */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { downloadFile, endpoint, modelDownloadPlan, type DownloadItem } from '../io/download.js';
import { createReporter, fmtBytes } from './progress.js';
import { parseVersion } from '../pipeline/official.js';

export function register(program: Command): void {
  program
    .command('download')
    .description('download the model files (DiT, VAE, Qwen2.5-VL-7B-Instruct, ~42 GB) into DIR in the official layout; resumes interrupted downloads')
    .argument('[dir]', 'target directory', 'step1x-model')
    .option('--version <v>', 'checkpoint version: v1.1 (step1x-edit-v1p1-official.safetensors, the official default) or v1.0 (step1x-edit-i1258.safetensors)', 'v1.1')
    .option('--quiet', 'no progress output')
    .action(async (dir: string, opts: { quiet?: boolean; version: string }) => {
      const version = parseVersion(opts.version);
      const target = resolve(dir);
      const rep = createReporter({ quiet: opts.quiet });
      rep.update(`listing files at ${endpoint()}`);
      const plan: DownloadItem[] = await modelDownloadPlan(target, endpoint(), version);
      for (const [i, item] of plan.entries()) {
        const tag = `[${i + 1}/${plan.length}] ${item.file}`;
        await downloadFile(item, (p) => {
          if (!p.done) rep.update(`${tag} ${fmtBytes(p.received)}${p.total ? ` / ${fmtBytes(p.total)} (${((100 * p.received) / p.total).toFixed(1)}%)` : ''}${p.resumed ? ' (resumed)' : ''}`);
        });
        rep.done(`${tag} ok`);
      }
      rep.done(`model ready in ${target}: run "step1x edit IMAGE INSTRUCTION --model ${dir}"`);
    });
}

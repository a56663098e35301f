/**
 * `step1x download [--local-dir DIR] [--version v1.2|v1.1|v1.0]`: fetch the model files resumably, with
 * checksums and progress; v1.2 (the diffusers-layout repo, the file list the hub gives) unless --version says. Default: into the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`), where
 * `step1x edit` finds them with no flags and files already cached are reused; `--local-dir DIR` (or the
 * positional DIR) writes the repo's layout (official for v1.0/v1.1, diffusers for v1.2) instead. Ctrl-C keeps what arrived: run again to resume.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { downloadFile, downloadToHfCache, endpoint, hfCachePlan, modelDownloadPlan, writeRef, type DownloadItem, type DownloadProgress } from '../io/download.js';
import { hfHubDir } from '../io/model-files.js';
import { installInterruptCleanup } from '../pipeline/output.js';
import { createReporter, fmtBytes, type Reporter } from './progress.js';
import { parseVersion } from '../pipeline/official.js';

function progressLine(rep: Reporter, tag: string) {
  return (p: DownloadProgress) => {
    if (!p.done) rep.update(`${tag} ${fmtBytes(p.received)}${p.total ? ` / ${fmtBytes(p.total)} (${((100 * p.received) / p.total).toFixed(1)}%)` : ''}${p.resumed ? ' (resumed)' : ''}`);
  };
}

async function fetchAll(items: DownloadItem[], rep: Reporter, one: (item: DownloadItem, onProgress: (p: DownloadProgress) => void) => Promise<void>, offset = 0, count = items.length): Promise<void> {
  for (const [i, item] of items.entries()) {
    const tag = `[${offset + i + 1}/${count}] ${item.repo}/${item.file}`;
    let cached = false;
    await one(item, (p) => {
      cached ||= Boolean(p.cached);
      progressLine(rep, tag)(p);
    });
    rep.done(`${tag} ${cached ? 'already there, verified' : 'ok'}`);
  }
}

export function register(program: Command): void {
  program
    .command('download')
    .description('download the model files (v1.2 by default: DiT, VAE, Qwen2.5-VL-7B text encoder, ~42 GB) into the Hugging Face cache (or --local-dir DIR); resumes interrupted downloads')
    .argument('[dir]', 'same as --local-dir DIR')
    .option('--local-dir <dir>', 'write the model directory into DIR instead of the Hugging Face cache (then pass --model DIR)')
    .option('--version <v>', 'checkpoint version: v1.2 (stepfun-ai/Step1X-Edit-v1p2, diffusers layout, the best open model), v1.1 (step1x-edit-v1p1-official.safetensors + Qwen2.5-VL-7B-Instruct, official layout) or v1.0 (step1x-edit-i1258.safetensors)', 'v1.2')
    .option('--quiet', 'no progress output')
    .action(async (dir: string | undefined, opts: { quiet?: boolean; version: string; localDir?: string }) => {
      installInterruptCleanup('what arrived is kept: run the same command again to resume the download');
      const version = parseVersion(opts.version);
      const local = opts.localDir ?? dir;
      const rep = createReporter({ quiet: opts.quiet });
      rep.update(`listing files at ${endpoint()}`);
      if (local) {
        const target = resolve(local);
        const plan = await modelDownloadPlan(target, endpoint(), version);
        await fetchAll(plan, rep, (item, p) => downloadFile(item, p));
        rep.done(`model ready in ${target}: run "step1x edit IMAGE INSTRUCTION --model ${local}"`);
        return;
      }
      const hub = hfHubDir();
      const repos = await hfCachePlan(hub, endpoint(), version);
      const count = repos.reduce((n, r) => n + r.items.length, 0);
      let offset = 0;
      for (const r of repos) {
        await fetchAll(r.items, rep, (item, p) => downloadToHfCache(item, p), offset, count);
        writeRef(r.repo, r.revision, hub);
        offset += r.items.length;
      }
      rep.done(`model ready in the Hugging Face cache ${hub}: run "step1x edit IMAGE INSTRUCTION" (no --model needed)`);
    });
}

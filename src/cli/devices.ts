/**
 * `step1x devices`: the WebGPU adapter step1x would use, its features and the limits that matter
 * (binding size decides how weights are split). No adapter → the runtime's Step1xError(NO_GPU),
 * which main.ts prints as one line.
 */
import type { Command } from 'commander';
import { Gpu } from '../runtime/gpu.js';
import { WANTED_FEATURES } from '../runtime/device.js';
import { exitQuietlyOnEpipe, humanBytes } from './inspect.js';

const BYTE_LIMITS = new Set(['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxUniformBufferBindingSize']);

export async function describeDevices(opts: { json?: boolean }): Promise<void> {
  const g = await Gpu.create();
  try {
    const d = g.describe();
    const used = WANTED_FEATURES.filter((f) => d.features.includes(f));
    if (opts.json) {
      process.stdout.write(JSON.stringify({ ...d, featuresUsed: used, maxBindingBytes: g.maxBindingBytes }, null, 1) + '\n');
      return;
    }
    const lines = [
      `adapter:      ${d.description || '(no description)'}`,
      `vendor:       ${d.vendor || '?'}   architecture: ${d.architecture || '?'}   device: ${d.device || '?'}`,
      `fallback:     ${d.isFallbackAdapter ? 'yes (software adapter)' : 'no'}`,
      `features:     ${d.features.join(', ') || '(none)'}`,
      `used:         ${used.join(', ') || '(none of shader-f16, subgroups, timestamp-query)'}`,
      'limits:',
      ...Object.entries(d.limits).map(([k, v]) => `  ${k.padEnd(36)} ${String(v).padStart(12)}${BYTE_LIMITS.has(k) ? `  (${humanBytes(v)})` : ''}`),
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    g.destroy();
  }
}

export function register(program: Command): void {
  program
    .command('devices')
    .description('show the WebGPU adapter, its features and limits')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      exitQuietlyOnEpipe();
      await describeDevices(opts);
    });
}

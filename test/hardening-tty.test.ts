/**
 * The launcher on a terminal (issue 12 item 5, issue 13 item 10): the child keeps its spinner through the
 * launcher's pipe, and no Dawn `Warning:` / `CheckVkSuccessImpl` line reaches the terminal, with or
 * without an adapter. Runs under `script` (a pseudo-terminal) when the machine has it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { DawnLogFilter } from '../src/cli/supervisor.js';
import { baseEnv, CLI, errorLine, expectCleanStderr, step1x } from './util/cli-run.js';

const hasScript = existsSync('/usr/bin/script');

function onTty(cmd: string, env: Record<string, string> = {}) {
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { env: { ...baseEnv, ...env, COLUMNS: '100' }, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout.replace(/\r/g, '') };
}

(hasScript ? test : test.skip)('on a terminal: spinner works through the launcher, one error line, no Dawn lines', () => {
  const r = onTty(`"${process.execPath}" "${CLI}" download --local-dir /nonexistent-dl-dir`, { HF_ENDPOINT: 'http://127.0.0.1:1' });
  expect(r.code).toBe(4);
  expect(r.out).toMatch(/step1x: error: cannot reach http:\/\/127\.0\.0\.1:1/);
  expect(r.out).not.toMatch(/TypeError|\n\s+at /);
  const d = onTty(`"${process.execPath}" "${CLI}" devices`);
  expect(d.out).not.toMatch(/^(Warning|Info): /m);
});

test('no adapter: exactly one error line, no CheckVkSuccessImpl / Warning lines (exit 5)', () => {
  const r = step1x(['devices'], { env: { VK_ICD_FILENAMES: '/nonexistent.json', VK_DRIVER_FILES: '/nonexistent.json' } });
  expect(r.code).toBe(5);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(errorLine(r.stderr)).toMatch(/no WebGPU adapter found/);
  expect(r.stderr).not.toMatch(/CheckVkSuccessImpl|Warning:/);
  expectCleanStderr(r.stderr);
});

test('devices with an adapter: no Dawn Warning line on stderr', () => {
  const r = step1x(['devices']);
  if (r.code === 5) return; // no adapter on this machine: covered above
  expect(r.code).toBe(0);
  expect(r.stderr).toBe('');
});

test('DawnLogFilter: drops Dawn lines and their continuation, passes everything else at once', () => {
  const got: string[] = [];
  const f = new DawnLogFilter((s) => got.push(s));
  f.write('Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16.\n');
  f.write("Warning: Couldn't load Vulkan: libvulkan.so.1\n    at operator() (/x/BackendVk.cpp:368)\n\n");
  f.write('opening the GPU');
  expect(got.join('')).toBe('opening the GPU'); // a spinner frame without newline goes out at once
  f.write('Warning: late native line\n'); // lands after the frame: dropped, the line is ended
  f.write('Warn');
  f.write('ings are ours\n'); // a prefix that turns out different passes
  f.write('\u001b[1G\u001b[0Kspinner\n');
  f.end();
  expect(got.join('')).toBe('opening the GPU\nWarnings are ours\n\u001b[1G\u001b[0Kspinner\n');
});

/**
 * Running the built CLI (bin/step1x.js, the launcher users run) from tests: exit code, stdout, stderr
 * untouched (no line is filtered here: a Dawn `Warning:` line reaching stderr is a failure the tests see).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng } from '../../src/io/image.js';
import { goldenCase, REPO_ROOT } from './golden-path.js';

export const CLI = join(REPO_ROOT, 'bin/step1x.js');
export const TINY_MODEL = join(goldenCase('tiny_e2e'), 'model');
export const baseEnv: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
delete baseEnv.STEP1X_SUPERVISED;
delete baseEnv.STEP1X_DAWN_LOG;

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function step1x(args: string[], opts: { env?: Record<string, string | undefined>; input?: Buffer; timeoutMs?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...baseEnv, ...opts.env },
    input: opts.input,
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 600_000,
    maxBuffer: 64 << 20,
  });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Run through a shell (pipes and redirections such as `| true` or `> /dev/full`). */
export function step1xSh(cmdline: string, env: Record<string, string> = {}): CliResult {
  const r = spawnSync('bash', ['-c', `set -o pipefail; ${cmdline}`], { env: { ...baseEnv, ...env, CLI }, encoding: 'utf8', timeout: 600_000 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

export function spawnCli(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** No stack trace, no Dawn log line, no internal error. */
export function expectCleanStderr(stderr: string): void {
  expect(stderr).not.toMatch(/\n\s+at /);
  expect(stderr).not.toMatch(/^(Warning|Info|Debug): /m);
  expect(stderr).not.toMatch(/internal error/);
}

/** The one `step1x: error:` line of a failed command. */
export function errorLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.startsWith('step1x: error:'));
  expect(lines).toHaveLength(1);
  return lines[0];
}

/** A small 4:3 photo-like PNG in a fresh temporary directory. */
export function tempPhoto(prefix = 'step1x-h-'): { dir: string; photo: string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const W = 64, H = 48;
  const data = new Uint8Array(W * H * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + (i >> 7) * 11) & 0xff;
  const photo = join(dir, 'photo.png');
  writeFileSync(photo, encodePng({ width: W, height: H, data }));
  return { dir, photo };
}

/** Cheapest real edit on the tiny model (≈ 20 s on lavapipe). */
export const FAST = ['--model', TINY_MODEL, '--size', '32', '--steps', '1', '--quiet'];

/** As `step1x`, without blocking the event loop (needed when the test process itself serves HTTP). */
export function step1xAsync(args: string[], opts: { env?: Record<string, string | undefined> } = {}): Promise<CliResult> {
  return new Promise((res) => {
    const c = spawn(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    c.stdout!.on('data', (d) => (stdout += d));
    c.stderr!.on('data', (d) => (stderr += d));
    c.on('close', (code, signal) => res({ code, signal, stdout, stderr }));
  });
}

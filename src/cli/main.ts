/**
 * The commander program. Commands live one per file (`register(program)`); this file only wires them,
 * maps errors to one-line messages with documented exit codes, and makes sure the process exits.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { stdoutWasClosed } from '../io/safe-write.js';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { sanitizeForTerminal } from './sanitize.js';
import { register as registerInspect } from './inspect.js';
import { register as registerDevices } from './devices.js';
import { register as registerGolden } from './golden.js';
import { register as registerDownload } from './download.js';
import { register as registerEdit } from './edit.js';
import { register as registerConvert } from './convert.js';
import { register as registerPlan } from './plan.js';
import { register as registerBatch } from './batch.js';
import { register as registerGenerate } from './generate.js';
import { register as registerTune } from './tune.js';
import { parseKernelSettings } from '../runtime/caps.js';

export function packageVersion(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const p of [join(here, '../../package.json'), join(here, '../../../package.json')]) {
    try {
      return JSON.parse(readFileSync(p, 'utf8')).version as string;
    } catch {
      /* try next */
    }
  }
  return '0.0.0';
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('step1x')
    .description('Step1X-Edit image editing on any GPU through WebGPU')
    .version(packageVersion(), '-V, --version')
    .showHelpAfterError('(run "step1x --help" for usage)')
    // program options only before the command: `edit ... --version v1.1` is the checkpoint version
    .enablePositionalOptions()
    .exitOverride();
  registerEdit(program);
  registerBatch(program);
  registerGenerate(program);
  registerInspect(program);
  registerDevices(program);
  registerGolden(program);
  registerDownload(program);
  registerConvert(program);
  registerPlan(program);
  registerTune(program);
  // Kernel family and precision on every command (edit, generate, golden, devices, tune, …), validated
  // before the action runs (a bad value is a usage error, exit 2).
  for (const c of program.commands)
    c.option('--kernels <family>', 'kernel family: auto | subgroup-matrix | tiled | register (env STEP1X_KERNELS)').option(
      '--precision <mode>',
      'f32 | mixed: f16 operands with f32 accumulation, the default with subgroup matrices (env STEP1X_PRECISION)',
    );
  program.hook('preAction', (_p, action) => void parseKernelSettings(action.opts<{ kernels?: string; precision?: string }>()));
  return program;
}

export function reportError(e: unknown): number {
  if (e instanceof CommanderError) {
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
    return ExitCode.USAGE; // commander already printed the message
  }
  if (e instanceof Step1xError) {
    process.stderr.write(`step1x: error: ${sanitizeForTerminal(e.message)}\n`);
    return e.code;
  }
  const err = e as Error;
  process.stderr.write(`step1x: internal error: ${sanitizeForTerminal(err?.message ?? String(e))}\n`);
  if (process.env.STEP1X_DEBUG) process.stderr.write(`${err?.stack}\n`);
  return ExitCode.GPU;
}

/**
 * stdout errors surface as 'error' events; without a listener Node turns them into an uncaught exception
 * with a stack trace. Writers that care (the image on `-o -`) get the error through their write callback;
 * here it is only recorded and judged when the command ends.
 */
let stdoutFailure: NodeJS.ErrnoException | undefined;
function watchStdout(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => void (stdoutFailure ??= e));
}

/** Every write to a closed stdout fails with EBADF (callback and 'error' event), as a closed fd would. */
function failStdoutWrites(): void {
  const err: NodeJS.ErrnoException = Object.assign(new Error('stdout is closed (EBADF)'), { code: 'EBADF' });
  process.stdout.write = ((_chunk: unknown, enc?: unknown, cb?: unknown) => {
    const done = (typeof enc === 'function' ? enc : cb) as ((e?: Error) => void) | undefined;
    process.nextTick(() => {
      process.stdout.emit('error', err);
      done?.(err);
    });
    return false;
  }) as typeof process.stdout.write;
}

/** Resolve once everything written to `s` has left the process (a slow reader gets it all). */
function drained(s: NodeJS.WriteStream): Promise<void> {
  return new Promise((res) => {
    if (!s.writableLength || s.destroyed) return res();
    const done = () => res();
    s.once('drain', done).once('error', done).once('close', done);
  });
}

export async function main(argv: string[]): Promise<void> {
  let code = 0;
  watchStdout();
  if (stdoutWasClosed()) failStdoutWrites();
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    code = reportError(e);
  }
  await drained(process.stdout);
  // A reader that closed the pipe early (`| head`, `| true`) wanted no more: not worth an error for text
  // output. Any other stdout failure (ENOSPC on /dev/full, EIO, a closed stdout) loses output: exit 7.
  if (code === 0 && stdoutFailure && stdoutFailure.code !== 'EPIPE') {
    process.stderr.write(`step1x: error: cannot write to stdout: ${stdoutFailure.code === 'EBADF' ? 'stdout is closed (EBADF)' : stdoutFailure.code ?? stdoutFailure.message}\n`);
    code = ExitCode.OUTPUT;
  }
  process.exitCode = code;
  await drained(process.stderr);
  // Dawn may keep handles alive after the device is destroyed: end the process once the output is out.
  process.exit(code);
}

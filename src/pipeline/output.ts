/**
 * Input and output files of an edit. Every file is written by src/io/safe-write.ts (rules there and in the
 * README's Safety section): temp beside + rename, inputs of the run never replaced, FIFOs and character
 * devices written directly. This file adds stdout, the output format and the interrupt handling.
 */
import { statSync } from 'node:fs';
import { extname } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { readImage, type DecodedImage, type RgbImage } from '../io/image.js';
import { encodeOutput, outputFormatFor, type OutputFormat } from '../io/encode.js';
import { checkWritePath, cleanupPending, registerRunInput, stdoutWasClosed, writeFileSafely } from '../io/safe-write.js';

export { cleanStaleTemps } from '../io/safe-write.js';

export interface OutputTarget {
  /** File path, or '-' for stdout. */
  path: string;
}

let handlersInstalled = false;
let interruptNote = 'no output written';

export function interruptNoteNow(): string {
  return interruptNote;
}

/** What an interruption now means for this command (a batch with outputs written says so). */
export function setInterruptNote(note: string): void {
  interruptNote = note;
}

/**
 * Install once: on SIGINT/SIGTERM/SIGHUP remove pending temporary outputs, print one line and end the process
 * by the signal itself (the shell sees 130 / 143). Re-raising with the default action ends the process
 * even when a thread is stuck in a blocking call (an input FIFO without a writer), where `process.exit`
 * would wait for it forever. `note` says what the interruption means for this command.
 */
export function installInterruptCleanup(note?: string): void {
  if (note) interruptNote = note;
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupPending);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
    process.on(sig, () => {
      cleanupPending();
      try {
        process.stderr.write(`\nstep1x: interrupted (${sig}); ${interruptNote}\n`);
      } catch {
        /* stderr closed */
      }
      process.removeAllListeners(sig);
      process.kill(process.pid, sig);
    });
}

export async function readInputImage(path: string, opts: { ignoreExif?: boolean } = {}): Promise<DecodedImage> {
  return readImage(path, { ignoreExif: opts.ignoreExif });
}

/**
 * Fail before any model work if the output cannot be written safely (src/io/safe-write.ts). `inputs` are
 * registered as inputs of the run first (the first is "the input image", the others "an input file").
 */
export function checkOutputPath(path: string, inputs: readonly string[] = []): void {
  if (path === '-') {
    if (stdoutWasClosed()) throw new Step1xError('cannot write the image to stdout: stdout is closed (EBADF); redirect it to a file or pass -o FILE', ExitCode.OUTPUT);
    return;
  }
  inputs.forEach((i, k) => i !== '-' && registerRunInput(i, k === 0 ? 'the input image' : 'an input file'));
  checkWritePath(path);
}

/** Write bytes to `path` following the rules of src/io/safe-write.ts. */
export async function writeOutputFile(path: string, bytes: Uint8Array): Promise<void> {
  await writeFileSafely(path, bytes);
}

/** stdout errors (EPIPE, ENOSPC, EIO) as one line with exit 7. */
export function stdoutError(e: NodeJS.ErrnoException): Step1xError {
  const why =
    e.code === 'EPIPE' ? 'the reading end of the pipe was closed (EPIPE)' : e.code === 'EBADF' ? 'stdout is closed (EBADF)' : e.code === 'ENOSPC' ? 'no space left on the device (ENOSPC)' : `${e.code ?? e.message}`;
  return new Step1xError(`cannot write the image to stdout: ${why}`, ExitCode.OUTPUT);
}

/** Write bytes to the target: a file (as `writeOutputFile`) or stdout for '-'. */
export async function writeOutputBytes(target: OutputTarget, bytes: Uint8Array): Promise<void> {
  if (target.path !== '-') return writeOutputFile(target.path, bytes);
  await new Promise<void>((res, rej) => {
    const onError = (e: NodeJS.ErrnoException) => rej(stdoutError(e));
    process.stdout.once('error', onError);
    process.stdout.write(bytes, (e) => {
      process.stdout.off('error', onError);
      if (e) rej(stdoutError(e as NodeJS.ErrnoException));
      else res();
    });
  });
}

/**
 * The format written to `path`: by its extension (src/io/encode.ts refuses unknown ones), except that
 * stdout and a FIFO or character device (`/dev/stdout`, `/dev/null`, a named pipe) get PNG, as `-` does.
 */
export function outputFormatOf(path: string): OutputFormat {
  if (path !== '-' && !extname(path)) {
    try {
      const st = statSync(path);
      if (st.isFIFO() || st.isCharacterDevice()) return 'png';
    } catch {
      /* not there: the extension rule applies */
    }
  }
  return outputFormatFor(path);
}

/**
 * Encode by the path's extension (PNG for '-'; .jpg/.jpeg/.webp via src/io/encode.ts) with the A1111
 * `parameters` text and, in PNGs, the detailed iTXt chunks; write safely (or to stdout for '-').
 */
export async function writeOutputPng(target: OutputTarget, img: RgbImage, text: Record<string, string>): Promise<void> {
  await writeOutputBytes(target, await encodeOutput(img, outputFormatOf(target.path), text));
}

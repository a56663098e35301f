/**
 * Input and output files of an edit. Outputs are written atomically and signal-safely: the PNG goes to a
 * temporary file in the target directory and is renamed into place; SIGINT/SIGTERM (and any exit) remove
 * a temporary file that is still pending, so an interrupted run never leaves a partial or stray file.
 */
import { existsSync, unlinkSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { readImage, type DecodedImage, type RgbImage } from '../io/image.js';
import { encodeOutput, outputFormatFor } from '../io/encode.js';

export interface OutputTarget {
  /** File path, or '-' for stdout. */
  path: string;
}

const pending = new Set<string>();
let handlersInstalled = false;

function cleanupPending(): void {
  for (const p of pending) {
    try {
      if (existsSync(p)) unlinkSync(p);
    } catch {
      /* best effort */
    }
  }
  pending.clear();
}

/** Install once: on SIGINT/SIGTERM remove pending temporary outputs and exit 130 (143 for TERM). */
export function installInterruptCleanup(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupPending);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const)
    process.on(sig, () => {
      cleanupPending();
      process.stderr.write(`\nstep1x: interrupted (${sig}); no output written\n`);
      process.exit(code);
    });
}

export async function readInputImage(path: string, opts: { ignoreExif?: boolean } = {}): Promise<DecodedImage> {
  return readImage(path, { ignoreExif: opts.ignoreExif });
}

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.partial`);
  pending.add(tmp);
  try {
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw new Step1xError(`cannot write ${path}: ${(e as Error).message}`, ExitCode.OUTPUT);
  } finally {
    pending.delete(tmp);
  }
}

/**
 * Encode by the path's extension (PNG for '-'; .jpg/.jpeg/.webp via src/io/encode.ts) with the A1111
 * `parameters` text and, in PNGs, the detailed iTXt chunks; write atomically (or to stdout for '-').
 */
export async function writeOutputPng(target: OutputTarget, img: RgbImage, text: Record<string, string>): Promise<void> {
  const bytes = await encodeOutput(img, outputFormatFor(target.path), text);
  if (target.path === '-') {
    await new Promise<void>((res, rej) => process.stdout.write(bytes, (e) => (e ? rej(new Step1xError(`cannot write to stdout: ${e.message}`, ExitCode.OUTPUT)) : res())));
    return;
  }
  await writeAtomic(target.path, bytes);
}

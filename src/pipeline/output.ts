/**
 * Input and output files of an edit, written so that nothing that is not ours is ever replaced:
 *  - a new path or an existing regular file: the bytes go to a temporary file in the target directory
 *    (`.step1x-<pid>-<random>.partial`) and are renamed into place; an existing file keeps its mode
 *    (and, for root, its owner); a read-only file is refused, not replaced;
 *  - a symlink is followed: its target is written as above (a dangling or looping link is refused);
 *  - a FIFO or a character device (`/dev/null`, `/dev/stdout`, a named pipe) is opened and written
 *    directly, never replaced; a block device, socket or directory is refused;
 *  - `-o` naming an input file is refused.
 * `checkOutputPath` finds every such problem (and a missing directory, a trailing slash, a name too long,
 * a directory we cannot create files in) before any model work, by creating and removing a probe file.
 * Temporary files of processes that no longer exist (a `kill -9` mid-write) are removed by the next run
 * that writes into the same directory; SIGINT/SIGTERM remove our own pending one and end the process.
 */
import { accessSync, closeSync, constants, existsSync, lstatSync, openSync, readdirSync, realpathSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { chmod, chown, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ExitCode, Step1xError } from '../errors.js';
import { readImage, type DecodedImage, type RgbImage } from '../io/image.js';
import { encodeOutput, outputFormatFor, type OutputFormat } from '../io/encode.js';

export interface OutputTarget {
  /** File path, or '-' for stdout. */
  path: string;
}

const pending = new Set<string>();
let handlersInstalled = false;
let interruptNote = 'no output written';

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

const outErr = (path: string, why: string) => new Step1xError(`cannot write ${path}: ${why}`, ExitCode.OUTPUT);
const TEMP_RE = /^\.step1x-(\d+)-[0-9a-f]+\.partial$/;
/** The name earlier versions used: `.<output name>.<pid>.partial`. */
const LEGACY_TEMP_RE = /^\..+\.(\d+)\.partial$/;

function tempName(dir: string): string {
  return join(dir, `.step1x-${process.pid}-${randomBytes(4).toString('hex')}.partial`);
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Remove temporary files left in `dir` by step1x processes that are gone. Returns the names removed. */
export function cleanStaleTemps(dir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const n of names) {
    const m = TEMP_RE.exec(n) ?? LEGACY_TEMP_RE.exec(n);
    if (!m || processAlive(Number(m[1]))) continue;
    try {
      if (lstatSync(join(dir, n)).isFile()) {
        unlinkSync(join(dir, n));
        removed.push(n);
      }
    } catch {
      /* raced with another cleaner */
    }
  }
  return removed;
}

function errno(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/** Where the bytes for `path` really go: the path itself or a symlink's final target. */
interface Resolved {
  /** The file actually written (symlinks resolved). */
  file: string;
  /** Its current state; undefined for a file that does not exist yet. */
  st?: Stats;
}

function resolveTarget(path: string): Resolved {
  if (/[\\/]$/.test(path)) throw outErr(path, 'the name ends with a slash (give a file name, not a directory)');
  let l: Stats;
  try {
    l = lstatSync(path);
  } catch (e) {
    if (errno(e) === 'ENOENT') return { file: resolve(path) };
    if (errno(e) === 'ENAMETOOLONG') throw outErr(path, 'the name is too long');
    if (errno(e) === 'ENOTDIR') throw outErr(path, 'a component of the path is not a directory');
    throw outErr(path, errno(e));
  }
  if (!l.isSymbolicLink()) return { file: resolve(path), st: l };
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    const c = errno(e);
    if (c === 'ELOOP') throw outErr(path, 'it is a symlink loop');
    if (c === 'ENOENT') {
      // a dangling link: write its target only if the target's directory exists
      throw outErr(path, 'it is a dangling symlink (its target does not exist); remove it or create the target first');
    }
    throw outErr(path, c);
  }
  return { file: real, st: statSync(real) };
}

const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

function checkExisting(path: string, st: Stats): 'replace' | 'direct' {
  if (st.isDirectory()) throw outErr(path, 'it is a directory');
  if (st.isFIFO() || st.isCharacterDevice()) return 'direct';
  if (st.isBlockDevice()) throw outErr(path, 'it is a block device; refusing to write an image onto it');
  if (st.isSocket()) throw outErr(path, 'it is a socket');
  if (!st.isFile()) throw outErr(path, 'it is not a regular file');
  // rename() would replace a file we may not write; root may write anything, so look at the mode bits too.
  if ((st.mode & 0o222) === 0 || !accessOk(path))
    throw outErr(path, 'the existing file is read-only (it is not replaced; remove it or choose another name)');
  return 'replace';
}

function accessOk(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function sameFile(a: string, b: string): boolean {
  try {
    const sa = statSync(a), sb = statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return resolve(a) === resolve(b);
  }
}

/**
 * Fail before any model work if the output cannot be written safely: names an input, ends with a slash,
 * sits in a missing or unwritable directory, is too long, or is a directory, block device, socket,
 * dangling/looping symlink or read-only file. Also removes stale temporary files of dead processes there.
 */
export function checkOutputPath(path: string, inputs: readonly string[] = []): void {
  if (path === '-') return;
  for (const i of inputs)
    if (i !== '-' && sameFile(path, i)) throw new Step1xError(`-o ${path} is the input image; refusing to overwrite it (choose another output name)`, ExitCode.USAGE);
  const { file, st } = resolveTarget(path);
  if (st && checkExisting(path, st) === 'direct') return;
  const dir = dirname(file);
  let ds: Stats;
  try {
    ds = statSync(dir);
  } catch {
    throw outErr(path, `directory ${dir} does not exist`);
  }
  if (!ds.isDirectory()) throw outErr(path, `${dir} is not a directory`);
  if (Buffer.byteLength(basename(file)) > 255) throw outErr(path, 'the file name is longer than 255 bytes');
  cleanStaleTemps(dir);
  // The real test: create and remove a temporary file where the output will be written.
  const probe = tempName(dir);
  try {
    closeSync(openSync(probe, 'wx'));
    unlinkSync(probe);
  } catch (e) {
    const c = errno(e);
    throw outErr(path, c === 'EACCES' || c === 'EPERM' ? `directory ${dir} is not writable` : c === 'EROFS' ? `${dir} is on a read-only file system` : c);
  }
}

async function writeReplacing(path: string, file: string, st: Stats | undefined, bytes: Uint8Array): Promise<void> {
  const dir = dirname(file);
  cleanStaleTemps(dir);
  const tmp = tempName(dir);
  pending.add(tmp);
  try {
    const fh = await open(tmp, 'wx', st ? st.mode & 0o7777 : 0o666);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (st) {
      await chmod(tmp, st.mode & 0o7777); // open() applied the umask
      if (isRoot() && (st.uid !== 0 || st.gid !== 0)) await chown(tmp, st.uid, st.gid).catch(() => undefined);
    }
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw outErr(path, (e as Error).message);
  } finally {
    pending.delete(tmp);
  }
}

async function writeDirect(path: string, file: string, bytes: Uint8Array): Promise<void> {
  try {
    const fh = await open(file, constants.O_WRONLY); // no O_CREAT / O_TRUNC: a device or FIFO is never replaced
    try {
      await fh.writeFile(bytes);
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw outErr(path, (e as Error).message);
  }
}

/** Write bytes to `path` following the rules at the top of this file (checks them again first). */
export async function writeOutputFile(path: string, bytes: Uint8Array): Promise<void> {
  const { file, st } = resolveTarget(path);
  if (st && checkExisting(path, st) === 'direct') return writeDirect(path, file, bytes);
  return writeReplacing(path, file, st, bytes);
}

/** stdout errors (EPIPE, ENOSPC, EIO) as one line with exit 7. */
export function stdoutError(e: NodeJS.ErrnoException): Step1xError {
  const why =
    e.code === 'EPIPE' ? 'the reading end of the pipe was closed (EPIPE)' : e.code === 'ENOSPC' ? 'no space left on the device (ENOSPC)' : `${e.code ?? e.message}`;
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

/**
 * The one writer of every file the tool writes (outputs, `--report`, `convert`'s OUT, `golden --dump`):
 *  - a new path or an existing regular file: the bytes go to a temporary file in the target directory and
 *    are renamed into place; an existing file keeps its mode (and, for root, its owner); a read-only file
 *    is refused, not replaced;
 *  - a symlink is followed: its target is written as above (a dangling or looping link is refused);
 *  - a FIFO or a character device (`/dev/null`, `/dev/stdout`, a named pipe) is opened and written
 *    directly, never replaced; a block device, socket or directory is refused;
 *  - a file that is an input of this run (registered with `registerRunInput`, compared by device + inode
 *    with symlinks resolved) is refused, whatever name reaches it;
 *  - paths on procfs / sysfs are refused at once (creating files there spins or fails oddly);
 *  - append-only logs (`openAppendLog`) are opened with O_APPEND and never truncated, so shards sharing
 *    one report file add their lines instead of erasing each other's.
 * Temporary names carry the host, the boot, the PID namespace and the pid:
 * `.step1x-<host>.<boot>.<pidns>.<pid>-<random>.partial`. The stale cleaner removes only names with our
 * host, boot and PID namespace whose pid is gone, so two pods of one Indexed Job sharing a volume (each in
 * its own PID namespace, pids colliding) never remove each other's in-flight files, and files of other
 * programs (`.video.mp4.4000000.partial`) are never touched.
 */
import { accessSync, closeSync, fstatSync, constants, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync, statfsSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { chmod, chown, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ExitCode, Step1xError } from '../errors.js';

const outErr = (path: string, why: string) => new Step1xError(`cannot write ${path}: ${why}`, ExitCode.OUTPUT);

function errno(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/** errno codes as words a user can act on. */
export function describeWriteError(e: unknown): string {
  const c = errno(e);
  if (c === 'ENOSPC') return 'no space left on the device (ENOSPC)';
  if (c === 'EDQUOT') return 'disk quota exceeded (EDQUOT)';
  if (c === 'EROFS') return 'read-only file system (EROFS)';
  if (c === 'EACCES' || c === 'EPERM') return `permission denied (${c})`;
  return c;
}

// ---- temporary names -----------------------------------------------------------------------------

function readOr(p: string, re: RegExp, fallback: string): string {
  try {
    return re.exec(p.startsWith('/proc/self/ns') ? readlinkSync(p) : readFileSync(p, 'utf8'))?.[1] ?? fallback;
  } catch {
    return fallback;
  }
}

/** host.boot.pidns: who may judge whether a pid in a temp name is alive. */
export const TEMP_OWNER = [
  hostname().replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 32) || 'host',
  readOr('/proc/sys/kernel/random/boot_id', /^([0-9a-f]{8})/, '0'),
  readOr('/proc/self/ns/pid', /\[(\d+)\]/, '0'),
].join('.');
const TEMP_RE = /^\.step1x-(.+)\.(\d+)-[0-9a-f]{8}\.partial$/;

export function tempName(dir: string): string {
  return resolve(dir, `.step1x-${TEMP_OWNER}.${process.pid}-${randomBytes(4).toString('hex')}.partial`);
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

/** Remove temporary files left in `dir` by our own (same host, boot, PID namespace) processes that are gone. */
export function cleanStaleTemps(dir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const n of names) {
    const m = TEMP_RE.exec(n);
    if (!m || m[1] !== TEMP_OWNER || processAlive(Number(m[2]))) continue;
    try {
      if (lstatSync(resolve(dir, n)).isFile()) {
        unlinkSync(resolve(dir, n));
        removed.push(n);
      }
    } catch {
      /* raced with another cleaner */
    }
  }
  return removed;
}

// ---- pending temps and interrupts --------------------------------------------------------------

const pending = new Set<string>();

/** Remove our pending temporary files (on exit and on SIGINT/SIGTERM/SIGHUP). */
export function cleanupPending(): void {
  for (const p of pending) {
    try {
      if (existsSync(p)) unlinkSync(p);
    } catch {
      /* best effort */
    }
  }
  pending.clear();
}

// ---- inputs of the run -------------------------------------------------------------------------

const runInputs = new Map<string, string>();

/** Remember `path` (symlinks followed) as an input of this run: no output may replace it. */
export function registerRunInput(path: string, label: string): void {
  try {
    const st = statSync(path);
    if (st.isFile()) runInputs.set(`${st.dev}:${st.ino}`, label);
  } catch {
    /* a missing input is reported by its reader */
  }
}

export function clearRunInputs(): void {
  runInputs.clear();
}

function inputLabel(st: Stats | undefined): string | undefined {
  return st ? runInputs.get(`${st.dev}:${st.ino}`) : undefined;
}

// ---- file systems we never write to ------------------------------------------------------------

const PSEUDO_FS: Record<number, string> = { 0x9fa0: 'procfs', 0x62656572: 'sysfs', 0x64626720: 'debugfs', 0x27e0eb: 'cgroup', 0x63677270: 'cgroup2' };

/** Refuse a path on procfs/sysfs/…: judged on the nearest existing ancestor, before anything is created. */
export function refusePseudoFs(path: string, what = path): void {
  let p = resolve(path);
  for (;;) {
    try {
      const t = Number(statfsSync(p).type);
      if (PSEUDO_FS[t]) throw outErr(what, `${p} is on ${PSEUDO_FS[t]}, not a file system for files`);
      return;
    } catch (e) {
      if (e instanceof Step1xError) throw e;
      const parent = dirname(p);
      if (parent === p) return;
      p = parent;
    }
  }
}

/** `mkdir -p` for an output directory, refusing pseudo file systems first; errors are exit 7. */
export function ensureOutputDir(dir: string, what: string): void {
  refusePseudoFs(dir, what);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Step1xError(`cannot create ${what}: ${describeWriteError(e)}`, ExitCode.OUTPUT);
  }
  if (!statSync(dir).isDirectory()) throw new Step1xError(`${what} is not a directory`, ExitCode.OUTPUT);
}

// ---- the target of a write ---------------------------------------------------------------------

/** Where the bytes for `path` really go: the path itself or a symlink's final target. */
interface Resolved {
  file: string;
  /** Its current state; undefined for a file that does not exist yet. */
  st?: Stats;
}

function resolveTarget(path: string): Resolved {
  if (/[\\/]$/.test(path)) throw outErr(path, 'the name ends with a slash (give a file name, not a directory)');
  refusePseudoFs(path);
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
    if (c === 'ENOENT') throw outErr(path, 'it is a dangling symlink (its target does not exist); remove it or create the target first');
    throw outErr(path, c);
  }
  refusePseudoFs(real, path);
  return { file: real, st: statSync(real) };
}

const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

function accessOk(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function checkExisting(path: string, st: Stats): 'replace' | 'direct' {
  const input = inputLabel(st);
  if (input) throw new Step1xError(`${path} is ${input}, an input of this run; refusing to overwrite it (choose another name)`, ExitCode.USAGE);
  if (st.isDirectory()) throw outErr(path, 'it is a directory');
  if (st.isFIFO() || st.isCharacterDevice()) return 'direct';
  if (st.isBlockDevice()) throw outErr(path, 'it is a block device; refusing to write onto it');
  if (st.isSocket()) throw outErr(path, 'it is a socket');
  if (!st.isFile()) throw outErr(path, 'it is not a regular file');
  // rename() would replace a file we may not write; root may write anything, so look at the mode bits too.
  if ((st.mode & 0o222) === 0 || !accessOk(path)) throw outErr(path, 'the existing file is read-only (it is not replaced; remove it or choose another name)');
  return 'replace';
}

/**
 * Fail before any work if `path` cannot be written safely: an input of the run, a trailing slash, a
 * missing or unwritable directory, a name too long, a directory, block device, socket, dangling/looping
 * symlink, read-only file, or a pseudo file system. Also removes our stale temporary files there.
 */
export function checkWritePath(path: string): void {
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
    throw outErr(path, c === 'EACCES' || c === 'EPERM' ? `directory ${dir} is not writable` : c === 'EROFS' ? `${dir} is on a read-only file system` : describeWriteError(e));
  }
}

/**
 * Write `path` through a temporary file beside it, renamed into place once `produce` has written it all
 * (a FIFO or character device is written directly). Interrupts and failures leave nothing behind.
 */
export async function writeAtomically(path: string, produce: (fh: FileHandle) => Promise<void>): Promise<void> {
  const { file, st } = resolveTarget(path);
  if (st && checkExisting(path, st) === 'direct') {
    try {
      const fh = await open(file, constants.O_WRONLY); // no O_CREAT / O_TRUNC: a device or FIFO is never replaced
      try {
        await produce(fh);
      } finally {
        await fh.close();
      }
    } catch (e) {
      throw outErr(path, describeWriteError(e));
    }
    return;
  }
  const dir = dirname(file);
  cleanStaleTemps(dir);
  const tmp = tempName(dir);
  pending.add(tmp);
  try {
    const fh = await open(tmp, 'wx', st ? st.mode & 0o7777 : 0o666);
    try {
      await produce(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (st) {
      await chmod(tmp, st.mode & 0o7777); // open() applied the umask
      if (isRoot() && (st.uid !== 0 || st.gid !== 0)) await chown(tmp, st.uid, st.gid).catch(() => undefined);
    }
    // test seam: hold the finished temporary file before the rename, so that a test can interrupt there
    const hold = Number(process.env.STEP1X_TEST_HOLD_OUTPUT_MS ?? 0);
    if (hold > 0) await new Promise((r) => setTimeout(r, hold));
    // the target may have become an input or changed kind meanwhile: judge it again just before the rename
    const now = resolveTarget(path);
    if (now.st && checkExisting(path, now.st) === 'direct') throw outErr(path, 'it became a FIFO or device while the output was being written; not replaced');
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    if (e instanceof Step1xError) throw e;
    throw outErr(path, describeWriteError(e));
  } finally {
    pending.delete(tmp);
  }
}

/** Write bytes to `path` following the rules at the top of this file. */
export async function writeFileSafely(path: string, bytes: Uint8Array | string): Promise<void> {
  await writeAtomically(path, async (fh) => void (await fh.writeFile(bytes)));
}

export interface AppendLog {
  append(line: string): void;
  close(): void;
}

/**
 * An append-only log (`--report`): checked like any output, then opened with O_APPEND (never truncated);
 * a FIFO is refused (opening one without a reader would block), a character device is written as is.
 * Write errors are exit 7 naming `what`.
 */
export function openAppendLog(path: string, what: string): AppendLog {
  const bad = (why: string) => new Step1xError(`cannot write ${what} ${path}: ${why}`, ExitCode.OUTPUT);
  const { st } = resolveTarget(path);
  if (st) {
    if (st.isFIFO()) throw bad('it is a FIFO (a report must be a regular file)');
    checkExisting(path, st);
  } else checkWritePath(path);
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOCTTY | constants.O_NONBLOCK, 0o666);
  } catch (e) {
    throw bad(describeWriteError(e));
  }
  return {
    append(line: string) {
      try {
        const b = Buffer.from(line);
        for (let off = 0; off < b.length; ) off += writeSync(fd, b, off);
      } catch (e) {
        throw bad(describeWriteError(e));
      }
    },
    close() {
      try {
        closeSync(fd);
      } catch {
        /* already closed */
      }
    },
  };
}

/**
 * Started with stdout closed (`>&-`), Node reopens fd 1 on /dev/null, read-write; a shell's `>/dev/null`
 * opens it write-only. Told apart by the access mode in /proc/self/fdinfo/1 (Linux).
 */
export function stdoutWasClosed(fdinfo = '/proc/self/fdinfo/1'): boolean {
  try {
    const st = fstatSync(1);
    if (!st.isCharacterDevice() || st.rdev !== statSync('/dev/null').rdev) return false;
    const flags = /^flags:\s*([0-7]+)/m.exec(readFileSync(fdinfo, 'utf8'))?.[1];
    return flags !== undefined && (parseInt(flags, 8) & 3) === 2;
  } catch {
    return false;
  }
}


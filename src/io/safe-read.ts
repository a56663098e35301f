/**
 * Reading a file the user (or a model directory, or a cache) names, as untrusted input: its type is
 * checked before it is opened (a FIFO would block forever, /dev/zero never ends, procfs files claim size 0
 * and are generated on the fly), and its size before it is read, so a 10 GB "manifest" or a sparse file
 * is refused in bounded memory with one line naming the file.
 */
import { closeSync, fstatSync, openSync, readSync, statSync, statfsSync, constants, type Stats } from 'node:fs';
import { ExitCode, Step1xError, type ExitCodeValue } from '../errors.js';

const PSEUDO_FS = new Set([0x9fa0 /* procfs */, 0x62656572 /* sysfs */, 0x64626720 /* debugfs */]);

function mib(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0)} MiB` : `${n} bytes`;
}

/**
 * The file's stats if it is a regular file of at most `maxBytes` on a real file system; otherwise a
 * Step1xError (`code`) saying what it is. `what` names the file's role ("--lora", "the tune cache").
 */
export function checkRegularFile(path: string, maxBytes: number, what: string, code: ExitCodeValue = ExitCode.USAGE): Stats {
  const bad = (why: string) => new Step1xError(`${what} ${path}: ${why}`, code);
  let st: Stats;
  try {
    st = statSync(path);
  } catch (e) {
    const c = (e as NodeJS.ErrnoException).code;
    throw bad(c === 'ENOENT' ? 'no such file' : c === 'ELOOP' ? 'a symlink loop' : c === 'EACCES' ? 'permission denied' : `cannot read it (${c})`);
  }
  if (st.isDirectory()) throw bad('is a directory, not a file');
  if (st.isFIFO()) throw bad('is a FIFO (named pipe), not a regular file; reading it could block forever');
  if (st.isCharacterDevice() || st.isBlockDevice()) throw bad('is a device, not a regular file');
  if (st.isSocket()) throw bad('is a socket, not a regular file');
  if (!st.isFile()) throw bad('is not a regular file');
  try {
    if (PSEUDO_FS.has(Number(statfsSync(path).type))) throw bad('is on procfs/sysfs (generated content), not a regular file');
  } catch (e) {
    if (e instanceof Step1xError) throw e;
  }
  if (st.size > maxBytes) throw bad(`is ${mib(st.size)}, more than the ${mib(maxBytes)} such a file may have`);
  return st;
}

/** Read a checked regular file whole (at most `maxBytes`, re-checked on the open descriptor). */
export function readCheckedBytes(path: string, maxBytes: number, what: string, code: ExitCodeValue = ExitCode.USAGE): Buffer {
  checkRegularFile(path, maxBytes, what, code);
  // O_NONBLOCK: if the path was swapped for a FIFO after the check, open() does not wait for a writer
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > maxBytes) throw new Step1xError(`${what} ${path}: changed while being opened (not a regular file of at most ${mib(maxBytes)})`, code);
    const buf = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

export function readCheckedText(path: string, maxBytes: number, what = 'file', code: ExitCodeValue = ExitCode.USAGE): string {
  return readCheckedBytes(path, maxBytes, what, code).toString('utf8');
}

/** `a/b.json`: relative, no `.`/`..`/empty component, no backslash, no control character, not too long. */
export function isPlainRelativePath(p: string): boolean {
  if (!p || p.length > 1024 || p.startsWith('/') || /[\\\u0000-\u001f\u007f]/.test(p)) return false;
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..' && Buffer.byteLength(c) <= 255);
}

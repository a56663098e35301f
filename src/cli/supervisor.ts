/**
 * The `step1x` launcher runs the command in a child process and stays beside it, for two reasons no
 * in-process code can serve:
 *  - Dawn's native code prints its log lines (`Warning: maxDynamic… artificially reduced …`,
 *    `Warning: Couldn't load Vulkan … at operator() (…BackendVk.cpp:368)`) with fprintf straight to file
 *    descriptor 2. The child's stderr is a pipe; the launcher copies it to the real stderr, dropping
 *    those lines and their `    at …` continuation (set STEP1X_DAWN_LOG=1 to keep them).
 *  - Signals always end the command: SIGINT/SIGTERM/SIGHUP are forwarded to the child, which removes
 *    its temporary files and ends itself; a child whose main thread is stuck in native code (a long
 *    pipeline compile, a blocking open) is killed after a one-second grace. The launcher then exits
 *    128 + the signal number (130 for SIGINT, 143 for SIGTERM).
 * stdin and stdout are the launcher's own (inherited), so `-` for images and `| head` work unchanged;
 * when stderr is a terminal the child is told so (STEP1X_STDERR_COLUMNS) and keeps its spinner.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import * as net from 'node:net';
import * as readline from 'node:readline';

const DAWN_PREFIXES = ['Warning: ', 'Info: ', 'Debug: '];
const CONTINUATION = '    at ';

/** Streaming filter of Dawn's native log lines; everything else passes through unchanged and at once. */
export class DawnLogFilter {
  private buf = '';
  private mode: 'start' | 'pass' | 'drop' = 'start';
  /** the previous line was dropped: its `    at …` continuation and one blank line go too */
  private afterDrop = false;

  constructor(private readonly out: (s: string) => void) {}

  private decide(b: string): 'pass' | 'drop' | 'wait' {
    if (this.afterDrop && b.startsWith('\n')) return 'drop';
    const cands = this.afterDrop ? [...DAWN_PREFIXES, CONTINUATION] : DAWN_PREFIXES;
    if (cands.some((c) => b.startsWith(c))) return 'drop';
    if (!b.includes('\n') && cands.some((c) => c.startsWith(b))) return 'wait';
    return 'pass';
  }

  /** One chunk as read from the pipe. A chunk starts where a write() of the child started. */
  write(chunk: string): void {
    let s = chunk;
    // A native log write can land after a spinner frame that has no newline yet.
    if (this.mode === 'pass' && DAWN_PREFIXES.some((p) => s.startsWith(p))) {
      this.out('\n');
      this.mode = 'start';
    }
    while (s.length) {
      if (this.mode !== 'start') {
        const i = s.indexOf('\n');
        const line = i < 0 ? s : s.slice(0, i + 1);
        if (this.mode === 'pass') this.out(line);
        if (i < 0) return;
        this.afterDrop = this.mode === 'drop' && line !== '\n';
        this.mode = 'start';
        s = s.slice(i + 1);
        continue;
      }
      this.buf += s;
      s = '';
      const d = this.decide(this.buf);
      if (d === 'wait') return;
      s = this.buf;
      this.buf = '';
      this.mode = d;
    }
  }

  end(): void {
    if (this.buf && this.decide(this.buf) !== 'drop') this.out(this.buf);
    this.buf = '';
  }
}

const GRACE_MS = 1000;

/** Run `script args` as a supervised child; never returns (exits with the child's code). */
export function supervise(script: string, args: string[]): void {
  const env: NodeJS.ProcessEnv = { ...process.env, STEP1X_SUPERVISED: '1' };
  if (process.stderr.isTTY) env.STEP1X_STDERR_COLUMNS = String(process.stderr.columns || 80);
  // Node options reach the child through NODE_OPTIONS only: execArgv may hold `-e CODE` (a launcher
  // started from an inline script), which would start another launcher instead of the command.
  // fd 3: a pipe nobody writes; the child sees its end-of-file when the launcher is gone, even by SIGKILL
  env.STEP1X_LAUNCHER_FD = '3';
  const child = spawn(process.execPath, [script, ...args], { stdio: ['inherit', 'inherit', 'pipe', 'pipe'], env });
  const raw = process.env.STEP1X_DAWN_LOG === '1';
  process.stderr.on('error', () => undefined); // a closed stderr must not take the launcher down
  const write = (s: string) => void process.stderr.write(s);
  const filter = new DawnLogFilter(write);
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (raw ? write(d) : filter.write(d)));

  let received: NodeJS.Signals | null = null;
  let killed = false;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
    process.on(sig, () => {
      if (received) return;
      received = sig;
      child.kill(sig);
      setTimeout(() => {
        killed = true;
        child.kill('SIGKILL');
      }, GRACE_MS).unref();
    });

  child.on('error', (e) => {
    write(`step1x: internal error: cannot start the command process: ${e.message}\n`);
    process.exit(8);
  });
  child.on('close', (code, signal) => {
    filter.end();
    if (code !== null) process.exit(code);
    const sig = (received ?? signal ?? 'SIGKILL') as NodeJS.Signals;
    if (killed) write(`\nstep1x: interrupted (${received}); stopped after ${GRACE_MS / 1000} s without a clean exit; no output written\n`);
    else if (!received) write(`step1x: error: the command process was killed by ${signal}${signal === 'SIGKILL' ? ' (out of memory?)' : ''}\n`);
    process.exit(128 + (constants.signals[sig] ?? 9));
  });
}

/**
 * In the child: end with the launcher. When the launcher dies (SIGKILL, OOM killer) its end of the fd-3
 * pipe closes; the child then acts as on SIGHUP (removes its temporary files, ends), instead of going on
 * writing the rest of a batch nobody waits for.
 */
export function dieWithLauncher(env: NodeJS.ProcessEnv = process.env): void {
  const fd = Number(env.STEP1X_LAUNCHER_FD);
  delete env.STEP1X_LAUNCHER_FD; // not inherited by anything this process starts
  if (!Number.isInteger(fd) || fd < 3) return;
  let s: net.Socket;
  try {
    s = new net.Socket({ fd, readable: true, writable: false });
  } catch {
    return; // not a pipe: started some other way
  }
  const gone = () => process.kill(process.pid, 'SIGHUP');
  s.on('end', gone).on('close', gone).on('error', () => undefined);
  s.resume();
  s.unref();
}

/** In the child: act on STEP1X_STDERR_COLUMNS (stderr is the launcher's pipe, its terminal is not); end with the launcher. */
export function adoptTerminalFromLauncher(): void {
  dieWithLauncher();
  const cols = Number(process.env.STEP1X_STDERR_COLUMNS);
  if (!(cols > 0) || process.stderr.isTTY) return;
  // the tty.WriteStream surface spinners use; the escape codes reach the terminal through the launcher
  const st = process.stderr;
  Object.assign(st, {
    isTTY: true,
    columns: cols,
    rows: 24,
    cursorTo: (x: number, y?: number, cb?: () => void) => readline.cursorTo(st, x, y, cb),
    moveCursor: (dx: number, dy: number, cb?: () => void) => readline.moveCursor(st, dx, dy, cb),
    clearLine: (dir: -1 | 0 | 1, cb?: () => void) => readline.clearLine(st, dir, cb),
    clearScreenDown: (cb?: () => void) => readline.clearScreenDown(st, cb),
    getWindowSize: () => [cols, 24],
    getColorDepth: () => 8,
    hasColors: (n = 16) => n <= 256,
  });
}

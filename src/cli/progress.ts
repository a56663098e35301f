/**
 * Progress on stderr: an `ora` spinner when stderr is a TTY, plain lines otherwise (pipelines, CI logs),
 * nothing with --quiet. The pipeline yields events; this only renders them.
 */
import ora, { type Ora } from 'ora';

export interface Reporter {
  update(text: string): void;
  /** A line that stays (stage finished). */
  done(text: string): void;
  fail(text: string): void;
  stop(): void;
}

export function createReporter(opts: { quiet?: boolean; stream?: NodeJS.WriteStream } = {}): Reporter {
  const stream = opts.stream ?? process.stderr;
  if (opts.quiet) return { update() {}, done() {}, fail() {}, stop() {} };
  // A pseudo-terminal that reports no width (some `script`/CI set-ups) would make the spinner's
  // line-clearing arithmetic run away: use plain lines there.
  if (stream.isTTY && (stream.columns ?? 0) > 0) {
    let sp: Ora | null = null;
    const spin = (): Ora => (sp ??= ora({ stream, discardStdin: false }).start());
    return {
      update: (t) => void (spin().text = t),
      done: (t) => {
        spin().succeed(t);
        sp = null;
      },
      fail: (t) => {
        spin().fail(t);
        sp = null;
      },
      stop: () => {
        sp?.stop();
        sp = null;
      },
    };
  }
  let last = '';
  let lastAt = 0;
  return {
    update: (t) => {
      // Plain mode: a new stage always prints; updates within a stage (same first word, e.g. the
      // sampling steps) at most once a second.
      const now = Date.now();
      const sameStage = t.split(' ')[0] === last.split(' ')[0];
      if (t !== last && (!sameStage || now - lastAt >= 1000)) {
        stream.write(`${t}\n`);
        last = t;
        lastAt = now;
      }
    },
    done: (t) => void stream.write(`${t}\n`),
    fail: (t) => void stream.write(`${t}\n`),
    stop: () => {},
  };
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

export function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${Math.round(s - m * 60)}s`;
}

/**
 * Progress on stderr, like tqdm:
 *  - on a terminal: an `ora` spinner line; counted work (sampling steps, Qwen layers, VAE levels) shows
 *    a bar `sampling  43%|████▎     | 12/28 [00:10<00:13, 1.20s/it]`;
 *  - plain timestamped lines (`[12:03:04] sampling 12/28 (43%), 00:10 elapsed, 00:13 left, 1.20 s/it`)
 *    when stderr is not a terminal, or `CI`, `TERM=dumb` or `NO_COLOR` is set: a new stage always
 *    prints, counted work at most once a second (and always its last item);
 *  - nothing with --quiet.
 * The pipeline yields events; this only renders them.
 */
import { sanitizeForTerminal } from './sanitize.js';
import ora, { type Ora } from 'ora';

export interface Reporter {
  update(text: string): void;
  /** Counted work: item `n` of `total` of `label` finished (`extra` is appended, e.g. "2 cached"). */
  progress(label: string, n: number, total: number, extra?: string): void;
  /** A line that stays (stage finished). */
  done(text: string): void;
  fail(text: string): void;
  stop(): void;
}

export interface ReporterOptions {
  quiet?: boolean;
  stream?: NodeJS.WriteStream;
  env?: NodeJS.ProcessEnv;
  /** Clock in ms (tests). */
  now?: () => number;
}

/** `1 step`, `2 steps`. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** tqdm's clock: `MM:SS`, `H:MM:SS` from an hour. */
export function fmtClock(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  const p2 = (v: number) => String(v).padStart(2, '0');
  return h ? `${h}:${p2(m)}:${p2(sec)}` : `${p2(m)}:${p2(sec)}`;
}

/** Step rate, tqdm style: `1.20s/it` when slower than one per second, else `3.45it/s`. */
export function fmtRate(secondsPerItem: number): string {
  if (!Number.isFinite(secondsPerItem) || secondsPerItem <= 0) return '?it/s';
  return secondsPerItem >= 1 ? `${secondsPerItem.toFixed(2)}s/it` : `${(1 / secondsPerItem).toFixed(2)}it/s`;
}

const BLOCKS = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];

/** A bar of `width` cells with eighth-block resolution. */
export function bar(frac: number, width = 20): string {
  const f = Math.min(1, Math.max(0, frac)) * width;
  const full = Math.floor(f);
  const part = Math.floor((f - full) * 8);
  return '█'.repeat(full) + (full < width ? BLOCKS[part] + ' '.repeat(width - full - 1) : '');
}

/** Whether progress should be plain lines: not a terminal, a terminal without a width, CI, TERM=dumb, NO_COLOR. */
export function plainMode(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!stream.isTTY || !((stream.columns ?? 0) > 0)) return true;
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== '0' && env.CI.toLowerCase() !== 'false';
  return ci || env.TERM === 'dumb' || (env.NO_COLOR !== undefined && env.NO_COLOR !== '');
}

interface Counter {
  label: string;
  start: number;
  lastN: number;
}

/**
 * Progress and result lines carry names from outside (manifest keys, file names, LoRA keys): every text
 * goes through sanitizeForTerminal, so no escape sequence, NUL or invisible BOM reaches the terminal raw.
 */
export function createReporter(opts: ReporterOptions = {}): Reporter {
  const r = createRawReporter(opts);
  const s = sanitizeForTerminal;
  return {
    update: (t) => r.update(s(t)),
    progress: (label, n, total, extra) => r.progress(s(label), n, total, extra === undefined ? undefined : s(extra)),
    done: (t) => r.done(s(t)),
    fail: (t) => r.fail(s(t)),
    stop: () => r.stop(),
  };
}

function createRawReporter(opts: ReporterOptions): Reporter {
  const stream = opts.stream ?? process.stderr;
  const now = opts.now ?? Date.now;
  if (opts.quiet) return { update() {}, progress() {}, done() {}, fail() {}, stop() {} };
  let counter: Counter | undefined;
  /** When the current stage began (its message, or the previous stage's end). */
  let stageStart = now();
  /** Elapsed, remaining and rate of the counted work; its clock starts with its stage. */
  const measure = (label: string, n: number, total: number) => {
    const t = now();
    if (!counter || counter.label !== label || n < counter.lastN) counter = { label, start: n === 0 ? t : stageStart, lastN: 0 };
    counter.lastN = n;
    const el = (t - counter.start) / 1000;
    // the first report (n done when the clock starts) has no rate yet
    const perItem = n > 0 && el > 0 ? el / n : NaN;
    return { el, perItem, left: Number.isFinite(perItem) ? perItem * (total - n) : NaN };
  };

  if (!plainMode(stream, opts.env)) {
    let sp: Ora | null = null;
    const spin = (): Ora => (sp ??= ora({ stream, discardStdin: false, isEnabled: true }).start());
    return {
      update: (t) => {
        spin().text = t;
        stageStart = now();
      },
      progress: (label, n, total, extra) => {
        const { el, perItem, left } = measure(label, n, total);
        const pct = total > 0 ? Math.floor((100 * n) / total) : 0;
        const sp = spin();
        sp.text = `${label} ${String(pct).padStart(3)}%|${bar(total > 0 ? n / total : 0)}| ${n}/${total} [${fmtClock(el)}<${fmtClock(left)}, ${fmtRate(perItem)}]${extra ? ` ${extra}` : ''}`;
        sp.render(); // show each step now, not at the next spinner frame
      },
      done: (t) => {
        spin().succeed(t);
        sp = null;
        counter = undefined;
        stageStart = now();
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

  const stamp = () => {
    const d = new Date(now());
    const p2 = (v: number) => String(v).padStart(2, '0');
    return `[${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}]`;
  };
  const line = (t: string) => void stream.write(`${stamp()} ${t}\n`);
  let last = '';
  let lastLabel = '';
  let lastAt = -Infinity;
  return {
    update: (t) => {
      if (t !== last) line(t);
      last = t;
      lastLabel = '';
      stageStart = now();
    },
    progress: (label, n, total, extra) => {
      const { el, perItem, left } = measure(label, n, total);
      const t = now();
      if (label === lastLabel && n < total && t - lastAt < 1000) return;
      lastLabel = label;
      const pct = total > 0 ? Math.floor((100 * n) / total) : 0;
      const times = n > 0 ? `, ${fmtClock(el)} elapsed, ${fmtClock(left)} left, ${Number.isFinite(perItem) ? `${perItem.toFixed(2)} s/it` : '?'}` : '';
      last = `${label} ${n}/${total}`;
      lastAt = t;
      line(`${label} ${n}/${total} (${pct}%)${times}${extra ? `, ${extra}` : ''}`);
    },
    done: (t) => {
      line(t);
      last = t;
      lastLabel = '';
      counter = undefined;
      stageStart = now();
    },
    fail: (t) => line(t),
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

/** Durations for messages: `12.3s`, `4m05s`, `1h02m03s` (rounded once, so never `5m60s`). */
export function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 59.95) return `${s.toFixed(1)}s`;
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  const p2 = (v: number) => String(v).padStart(2, '0');
  return h ? `${h}h${p2(m)}m${p2(sec)}s` : `${m}m${p2(sec)}s`;
}

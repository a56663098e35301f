/**
 * Progress rendering (src/cli/progress.ts) on a fake stream with a fake clock: plain timestamped lines
 * when not a terminal or when CI / TERM=dumb / NO_COLOR say so, a tqdm-like bar on a terminal, throttling,
 * plurals and minute/second formatting.
 */
import { bar, createReporter, fmtClock, fmtRate, fmtSeconds, plainMode, plural } from '../src/cli/progress.js';

function fakeStream(tty: boolean, columns = 80) {
  const chunks: string[] = [];
  const s = {
    isTTY: tty,
    columns: tty ? columns : undefined,
    write: (c: string) => (chunks.push(String(c)), true),
    // what ora touches on a terminal stream
    on: () => s, once: () => s, removeListener: () => s, off: () => s,
    cursorTo: () => true, moveCursor: () => true, clearLine: () => true,
  };
  return { stream: s as unknown as NodeJS.WriteStream, text: () => chunks.join('') };
}

test('formatting: durations never read 5m60s, tqdm clock and rate, plurals, bar', () => {
  expect(fmtSeconds(359.7)).toBe('6m00s');
  expect(fmtSeconds(59.96)).toBe('1m00s');
  expect(fmtSeconds(12.34)).toBe('12.3s');
  expect(fmtSeconds(3725)).toBe('1h02m05s');
  expect(fmtSeconds(NaN)).toBe('?');
  expect(fmtClock(0)).toBe('00:00');
  expect(fmtClock(599.6)).toBe('10:00');
  expect(fmtClock(3661)).toBe('1:01:01');
  expect(fmtClock(NaN)).toBe('?');
  expect(fmtRate(1.2)).toBe('1.20s/it');
  expect(fmtRate(0.25)).toBe('4.00it/s');
  expect(plural(1, 'step')).toBe('1 step');
  expect(plural(2, 'step')).toBe('2 steps');
  expect(plural(0, 'entry', 'entries')).toBe('0 entries');
  expect(bar(0, 10)).toBe(' '.repeat(10));
  expect(bar(1, 10)).toBe('█'.repeat(10));
  expect(bar(0.55, 10)).toBe('█████▌    ');
  expect([...bar(0.37, 20)].length).toBe(20);
});

test('plain mode: not a TTY, a TTY without width, CI, TERM=dumb, NO_COLOR', () => {
  const tty = fakeStream(true).stream;
  expect(plainMode(tty, {})).toBe(false);
  expect(plainMode(fakeStream(false).stream, {})).toBe(true);
  expect(plainMode(fakeStream(true, 0).stream, {})).toBe(true);
  expect(plainMode(tty, { CI: 'true' })).toBe(true);
  expect(plainMode(tty, { CI: 'false' })).toBe(false);
  expect(plainMode(tty, { TERM: 'dumb' })).toBe(true);
  expect(plainMode(tty, { NO_COLOR: '1' })).toBe(true);
});

test('plain lines: timestamped, every stage, counted work throttled to 1/s but always its last item, with elapsed/left/rate', () => {
  const f = fakeStream(false);
  let t = Date.UTC(2026, 0, 1, 12, 0, 0);
  const rep = createReporter({ stream: f.stream, env: { CI: 'true' }, now: () => t });
  rep.update('VAE: encoding');
  rep.progress('sampling', 0, 4);
  for (let k = 1; k <= 4; k++) {
    t += k === 2 ? 400 : 2000; // step 2 comes 0.4 s after step 1: throttled
    rep.progress('sampling', k, 4, k === 4 ? '1 cached' : undefined);
  }
  rep.done('sampled 4 steps');
  const lines = f.text().trim().split('\n');
  for (const l of lines) expect(l).toMatch(/^\[\d\d:\d\d:\d\d\] /);
  const body = lines.map((l) => l.slice(11));
  expect(body).toEqual([
    'VAE: encoding',
    'sampling 0/4 (0%)',
    'sampling 1/4 (25%), 00:02 elapsed, 00:06 left, 2.00 s/it',
    'sampling 3/4 (75%), 00:04 elapsed, 00:01 left, 1.47 s/it',
    'sampling 4/4 (100%), 00:06 elapsed, 00:00 left, 1.60 s/it, 1 cached',
    'sampled 4 steps',
  ]);
});

test('sub-stage progress (Qwen layers) counts from the stage start', () => {
  const f = fakeStream(false);
  let t = 0;
  const rep = createReporter({ stream: f.stream, env: {}, now: () => t });
  rep.update('Qwen2.5-VL: embedding');
  t = 3000;
  rep.progress('Qwen2.5-VL layers', 1, 28);
  expect(f.text()).toMatch(/Qwen2\.5-VL layers 1\/28 \(3%\), 00:03 elapsed, 01:21 left, 3\.00 s\/it/);
});

test('terminal: a tqdm-like bar with percentage, count, elapsed<remaining and rate', () => {
  const f = fakeStream(true);
  let t = 0;
  const rep = createReporter({ stream: f.stream, env: {}, now: () => t });
  rep.progress('sampling', 0, 28);
  t = 12_000;
  rep.progress('sampling', 10, 28);
  rep.stop();
  expect(f.text()).toMatch(/sampling {2}35%\|███████▏ {12}\| 10\/28 \[00:12<00:22, 1\.20s\/it\]/);
});

test('--quiet prints nothing', () => {
  const f = fakeStream(false);
  const rep = createReporter({ quiet: true, stream: f.stream });
  rep.update('x');
  rep.progress('sampling', 1, 2);
  rep.done('y');
  rep.fail('z');
  expect(f.text()).toBe('');
});

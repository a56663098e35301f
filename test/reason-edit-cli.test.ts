/**
 * `step1x edit --think --reflect` end to end on the tiny v1.2 model (test/golden/v12_e2e_tiny/model): the
 * thinker is the model's own (random-weight) text encoder, so its replies never parse and every round ends
 * in the fixed <#Failed> reflection with [0, 0] scores — which exercises the rewrite, the retries, the
 * fallbacks, the "edit the original again" rule and the tie-to-the-later-round selection. The thinker is
 * shortened with the test limits (8 new tokens, 1 try per parser; the PNG records them). Checks what the run
 * records (--json, PNG parameters, --keep-rounds files), that a seed reproduces the run, and the usage errors.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { readImage, writePng } from '../src/io/image.js';
import { readPngTextChunks } from '../src/io/png-text.js';
import { FAILED_REFLECTION } from '../src/pipeline/reason/loop.js';
import { REPO_ROOT, goldenCase } from './util/golden-path.js';

const model = join(goldenCase('v12_e2e_tiny'), 'model');
let dir: string;
let photo: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-reason-cli-'));
  photo = join(dir, 'photo.png');
  const f = await SafetensorsFile.open(join(goldenCase('v12_loop_scripted'), 'io.safetensors'));
  try {
    const [H, W] = f.tensors.get('in.photo_u8')!.shape;
    await writePng(photo, { width: W, height: H, data: await f.readBytes('in.photo_u8') });
  } finally {
    await f.close();
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function step1x(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [join(REPO_ROOT, 'bin/step1x.js'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp', STEP1X_THINKER_MAX_TOKENS: '8', STEP1X_THINKER_RETRIES: '1', ...env },
  });
}
const tiny = ['--model', model, '--size', '64', '--steps', '2', '--seed', '7'];

test('edit --think --reflect --max-rounds 2 --keep-rounds: rounds, verdicts and the thinker work recorded in --json, the PNG and DIR', async () => {
  const out = join(dir, 'out.png'), keep = join(dir, 'rounds');
  const r = step1x(['edit', photo, 'make it snow', ...tiny, '--think', '--reflect', '--max-rounds', '2', '--keep-rounds', keep, '-o', out, '--json']);
  if (r.status !== 0) throw new Error(`step1x edit exited ${r.status}: ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').pop()!);
  const rs = j.reason;
  expect(rs.think).toBe(true);
  expect(rs.reflect).toBe(true);
  expect(typeof rs.rewritten_instruction).toBe('string');
  expect(rs.rounds.map((x: any) => [x.round, x.edits, x.prompt])).toEqual([[0, 'original', rs.rewritten_instruction], [1, 'original', rs.rewritten_instruction]]);
  for (const x of rs.rounds) expect([x.verdict, x.success, x.score1, x.score2, x.selection_score]).toEqual([FAILED_REFLECTION, false, [0, 0], [0, 0], 0]);
  expect(rs.final_round).toBe(1); // a tie without <#Success> goes to the later round
  // think 1 + per round: description 1, scoring 1 (fails: no reflection call), score1 1, score2 1
  expect(rs.mllm_calls).toBe(9);
  expect(rs.mllm_generated_tokens).toBeLessThanOrEqual(9 * 8);
  expect(rs.mllm_prompt_tokens).toBeGreaterThan(0);
  expect(rs.kept_rounds).toEqual([join(keep, 'round0.png'), join(keep, 'round1.png')]);
  expect(r.stderr).toContain(`rewritten instruction: ${rs.rewritten_instruction.replace(/\s+/g, ' ').trim()}`);
  expect(r.stderr).toMatch(/thinking .*reformat: /); // the generation streamed as counted progress
  expect(r.stderr).toMatch(/round 1: verdict Failed, score1 \[0,0\], score2 \[0,0\]/);
  const final = await readImage(out), round1 = await readImage(join(keep, 'round1.png'));
  expect([final.width, final.height]).toEqual([64, 48]);
  expect(Buffer.from(final.data).equals(Buffer.from(round1.data))).toBe(true);
  const text = Object.fromEntries((await readPngTextChunks(out)).map((c) => [c.keyword, c.text]));
  expect(text.reasoning).toBe('think + reflect (max 2 rounds)');
  expect(text['rewritten-instruction']).toBe(rs.rewritten_instruction);
  expect(JSON.parse(text.rounds).map((x: any) => x.verdict)).toEqual([FAILED_REFLECTION, FAILED_REFLECTION]);
  expect(text['final-round']).toBe('1');
  expect(text['thinker-limits']).toMatch(/test limits/);
  expect(existsSync(join(keep, 'round0.png'))).toBe(true);
});

test('edit --think: the same seed gives the same rewrite and the same image', async () => {
  const runs = [0, 1].map((k) => {
    const out = join(dir, `think${k}.png`);
    const r = step1x(['edit', photo, 'make it snow', ...tiny, '--think', '-o', out, '--json']);
    if (r.status !== 0) throw new Error(`step1x edit exited ${r.status}: ${r.stderr}`);
    return { j: JSON.parse(r.stdout.trim().split('\n').pop()!).reason, out };
  });
  expect(runs[0].j.rounds.length).toBe(1);
  expect(runs[0].j.mllm_calls).toBe(1);
  expect(runs[1].j.rewritten_instruction).toBe(runs[0].j.rewritten_instruction);
  const [a, b] = await Promise.all(runs.map((x) => readImage(x.out)));
  expect(Buffer.from(a.data).equals(Buffer.from(b.data))).toBe(true);
});

test.each([
  [['--reflect'], /v1\.2 model/, ['--model', join(goldenCase('tiny_e2e_v11'), 'model')]],
  [['--max-rounds', '2'], /--max-rounds needs --reflect/, tiny],
  [['--keep-rounds', '/tmp/x'], /--keep-rounds needs --think or --reflect/, tiny],
  [['--reflect', '--max-rounds', '0'], /--max-rounds must be/, tiny],
])('%j is a one-line usage error (exit 2)', (opts, msg, modelArgs) => {
  const r = step1x(['edit', photo, 'make it snow', ...modelArgs, ...opts, '-o', join(dir, 'never.png')]);
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(msg);
  expect(r.stderr.trim().split('\n').filter((l) => l.startsWith('step1x: error')).length).toBe(1);
  expect(existsSync(join(dir, 'never.png'))).toBe(false);
});

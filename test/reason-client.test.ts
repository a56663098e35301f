/**
 * The thinker client on the tiny v1.2 model directory (test/golden/v12_e2e_tiny/model): ReasonLoop.think with
 * the real MLLM, greedy and capped at 24 new tokens, returns the decoded first 24 ids of
 * v12_thinker_greedy_tiny's think call (the full 128 are the golden's, test/reason-thinker); in sampling mode the same
 * seed gives the same text, streamed token by token. (The random tiny model is so peaked that top-p 0.9 keeps one
 * token per step, so different seeds give the same text here; the drawer itself is tested in reason-sampling.)
 * Generation is capped at 24 new tokens for the sampling checks (the contract's 128 is tested by the golden).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { readDiffusersDir } from '../src/io/diffusers-layout.js';
import { QwenThinkerClient } from '../src/pipeline/reason/client.js';
import { ReasonLoop } from '../src/pipeline/reason/loop.js';
import type { RgbImage } from '../src/io/resize.js';
import { goldenCase } from './util/golden-path.js';

afterAll(releaseGpu);

test('greedy think() through ReasonLoop equals the golden; sampling is seeded and streamed', async () => {
  const g = await getGpu();
  const caseDir = goldenCase('v12_thinker_greedy_tiny');
  const cj = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
  const io = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
  const [H, W] = io.tensors.get('in.photo_u8')!.shape;
  const photo: RgbImage = { width: W, height: H, data: await io.readBytes('in.photo_u8') };
  const goldenIds = await io.readI32('out.think.generated_ids');
  await io.close();
  const d = readDiffusersDir(join(goldenCase('v12_e2e_tiny'), 'model'));
  const noEdit = async (_p: string, img: RgbImage) => img;

  const greedy = await QwenThinkerClient.load(g, d.textEncoderDir, d.tokenizerDir, { greedy: true, maxNewTokens: 24 });
  try {
    const text = await new ReasonLoop<RgbImage>({ callModel: (m) => greedy.callModel(m), edit: noEdit }).think(photo, cj.spec.prompt);
    expect(text).toBe(greedy.tok.decode(goldenIds.slice(0, 24), true).trim());
    expect(cj.think_returned.startsWith(text)).toBe(true);
    expect(greedy.log[0]).toMatchObject({ kind: 'reformat', promptTokens: 1029, newTokens: 24, stoppedBy: 'max_new_tokens' });
  } finally {
    await greedy.dispose();
  }

  const sample = async (seed: number) => {
    const streamed: string[] = [];
    const c = await QwenThinkerClient.load(g, d.textEncoderDir, d.tokenizerDir, { seed, maxNewTokens: 24, onToken: (_k, t) => void streamed.push(t) });
    try {
      const t = await c.callModel({ kind: 'score2', system: 'You are a helpful assistant.', user: [{ type: 'image', image: photo }, { type: 'text', text: 'Describe it.' }] });
      return { t, streamed };
    } finally {
      await c.dispose();
    }
  };
  const a = await sample(5), b = await sample(5);
  expect(a.t).toBe(b.t);
  expect(a.streamed.length).toBeGreaterThan(0);
  expect(a.streamed[a.streamed.length - 1].trim()).toBe(a.t);
}, 600_000);

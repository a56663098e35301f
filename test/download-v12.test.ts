/**
 * `step1x download` of v1.2, the default: from a loopback fake hub serving the real stepfun-ai/Step1X-Edit-v1p2
 * file list recorded in test/golden/real_shapes_v12 (model_index.json, every config, the transformer's and the
 * text encoder's shards with their indexes, the VAE, the scheduler and processor files) beside what a hub repo
 * also holds and an edit does not need (README.md, .gitattributes, an example image): exactly the recorded
 * list is fetched, into the Hugging Face cache (no --version) or --local-dir DIR, and nothing from the
 * official-layout repos.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { startFakeHub, type FakeHub, type HubFile } from './util/fake-hub.js';
import { step1xAsync } from './util/cli-run.js';
import { goldenCase } from './util/golden-path.js';

const REPO = 'stepfun-ai/Step1X-Edit-v1p2';
const rs = goldenCase('real_shapes_v12');
const read = (f: string) => JSON.parse(readFileSync(join(rs, f), 'utf8'));

/** The real repo's model files as real_shapes_v12 records them (files marked "listing cut" are not invented). */
function recordedFiles(): string[] {
  const configs = read('configs.json') as Record<string, { value: unknown }>;
  const files = Object.keys(configs).filter((k) => k.endsWith('.json'));
  files.push(...Object.keys(read('transformer.json').shard_bytes).map((s) => `transformer/${s}`), 'transformer/diffusion_pytorch_model.safetensors.index.json');
  const te = read('text_encoder.json').files_listed_on_hub_page as string[];
  files.push(...te.filter((f) => !f.startsWith('...')).map((f) => `text_encoder/${f}`));
  files.push('vae/diffusion_pytorch_model.safetensors');
  // "Qwen2_5_VLProcessor files (tokenizer.json, tokenizer_config.json, …)"
  const proc = /\(([^)]*)\)/.exec(String(configs['processor/'].value))![1].split(',').map((s) => s.trim());
  files.push(...proc.map((f) => `processor/${f}`));
  return [...new Set(files)].sort();
}

function walk(dir: string): string[] {
  const out: string[] = [];
  const go = (d: string) => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) go(p);
      else out.push(relative(dir, p));
    }
  };
  go(dir);
  return out.sort();
}

let hub: FakeHub;
const expected = recordedFiles();

beforeAll(async () => {
  const configs = read('configs.json') as Record<string, { value: unknown }>;
  const files = new Map<string, HubFile>();
  for (const f of expected) {
    const c = configs[f]?.value;
    files.set(f, { data: Buffer.from(c !== undefined ? JSON.stringify(c) : `placeholder ${f}`), lfs: f.endsWith('.safetensors') });
  }
  for (const f of ['README.md', '.gitattributes', 'assets/example.png']) files.set(f, { data: Buffer.from(f), lfs: false });
  hub = await startFakeHub({ [REPO]: files });
});
afterAll(() => hub.close());

test('the recorded list is the real repo\'s layout: 3 transformer shards, 4 text encoder shards, one VAE file, the processor', () => {
  expect(expected.filter((f) => f.endsWith('.safetensors'))).toEqual([
    ...[1, 2, 3].map((i) => `text_encoder/model-0000${i}-of-00004.safetensors`), 'text_encoder/model-00004-of-00004.safetensors',
    ...[1, 2, 3].map((i) => `transformer/diffusion_pytorch_model-0000${i}-of-00003.safetensors`), 'vae/diffusion_pytorch_model.safetensors',
  ].sort());
  expect(expected).toEqual(expect.arrayContaining(['model_index.json', 'processor/tokenizer.json', 'processor/chat_template.jinja', 'scheduler/scheduler_config.json', 'transformer/config.json', 'vae/config.json']));
});

test('step1x download (no --version: v1.2) fetches exactly the recorded files into the Hugging Face cache', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'step1x-hfv12-'));
  try {
    hub.log.length = 0;
    const r = await step1xAsync(['download', '--quiet'], { env: { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.base, STEP1X_MODEL: undefined, HF_HOME: undefined } });
    expect([r.code, r.stderr]).toEqual([0, '']);
    const rev = hub.repos.get(REPO)!.sha;
    const snap = join(cache, 'models--stepfun-ai--Step1X-Edit-v1p2', 'snapshots', rev);
    expect(walk(snap)).toEqual(expected);
    expect(hub.log.filter((u) => u.includes('/resolve/')).map((u) => u.replace(`/${REPO}/resolve/main/`, '')).sort()).toEqual(expected);
    expect(hub.log.filter((u) => !u.includes(REPO))).toEqual([]); // neither stepfun-ai/Step1X-Edit nor the Qwen repo
    expect(readFileSync(join(cache, 'models--stepfun-ai--Step1X-Edit-v1p2', 'refs', 'main'), 'utf8')).toBe(rev);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

test('step1x download --version v1.2 --local-dir DIR writes the same files in the repo\'s layout', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'step1x-v12dir-'));
  try {
    const r = await step1xAsync(['download', '--version', 'v1.2', '--local-dir', dir, '--quiet'], { env: { HF_ENDPOINT: hub.base } });
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(walk(dir)).toEqual(expected);
    expect(JSON.parse(readFileSync(join(dir, 'model_index.json'), 'utf8'))._class_name).toBe('Step1XEditPipelineV1P2');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

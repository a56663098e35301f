/**
 * Header-only fakes of the real model directories (official layout), built from the in-repo copies of
 * ../shared/golden/real_shapes*: `step1x-edit-i1258.safetensors` (v1.0) or
 * `step1x-edit-v1p1-official.safetensors` (v1.1: the same file without `connector.scale_factor`),
 * `vae.safetensors`, and `Qwen2.5-VL-7B-Instruct/` (sharded, index, config, a placeholder tokenizer).
 * Sparse files: a 42 GB directory costs a few MB of disk.
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { shapesJsonEntries } from '../../src/io/checkpoint.js';
import { goldenCase } from './golden-path.js';
import { writeFakeShardedQwen, writeHeaderOnlyFake } from './fake-checkpoint.js';

export async function writeFakeRealModel(dir: string, version: 'v1.0' | 'v1.1'): Promise<string> {
  await mkdir(dir, { recursive: true });
  const rs = goldenCase('real_shapes'), rq = goldenCase('real_shapes_qwen');
  const dit = (await shapesJsonEntries(join(rs, 'dit_step1x-edit-i1258.json'))).map((e) => ({ ...e, dtype: e.name === 'connector.scale_factor' ? e.dtype : ('BF16' as const) }));
  if (version === 'v1.0') await writeHeaderOnlyFake(join(dir, 'step1x-edit-i1258.safetensors'), dit);
  else await writeHeaderOnlyFake(join(dir, 'step1x-edit-v1p1-official.safetensors'), dit.filter((e) => e.name !== 'connector.scale_factor'));
  await writeHeaderOnlyFake(join(dir, 'vae.safetensors'), await shapesJsonEntries(join(rs, 'vae.json')));
  const q = join(dir, 'Qwen2.5-VL-7B-Instruct');
  await writeFakeShardedQwen(q, await shapesJsonEntries(join(rq, 'params.json')));
  for (const f of ['config.json', 'preprocessor_config.json', 'chat_template.json']) await copyFile(join(rq, f), join(q, f));
  await writeFile(join(q, 'tokenizer.json'), '{}');
  return dir;
}

/**
 * A header-only fake of the real stepfun-ai/Step1X-Edit-v1p2 repo (diffusers layout) from the in-repo copy
 * of real_shapes_v12: model_index.json and every config from configs.json; transformer/ and text_encoder/
 * sharded as the description says (each tensor's shard, an index per folder), vae/ one file; processor/
 * with placeholder tokenizer files (plan and inspect read no tokenizer).
 */
export async function writeFakeV12Model(dir: string, o: { /** v12_e2e_tiny's real Qwen tokenizer and chat template (a dry-run edit tokenizes) */ tokenizer?: boolean } = {}): Promise<string> {
  const rs = goldenCase('real_shapes_v12');
  const configs = JSON.parse(await readFile(join(rs, 'configs.json'), 'utf8'));
  const sharded = async (sub: string, file: string, stem: string) => {
    const tensors = JSON.parse(await readFile(join(rs, file), 'utf8')).tensors as { name: string; shape: number[]; dtype: string; shard: string }[];
    const dtype = (d: string) => ({ bf16: 'BF16', f32: 'F32' })[d] as 'BF16' | 'F32';
    const byShard = new Map<string, { name: string; shape: number[]; dtype: 'BF16' | 'F32' }[]>();
    for (const t of tensors) byShard.set(t.shard, [...(byShard.get(t.shard) ?? []), { name: t.name, shape: t.shape, dtype: dtype(t.dtype) }]);
    await mkdir(join(dir, sub), { recursive: true });
    for (const [shard, entries] of byShard) await writeHeaderOnlyFake(join(dir, sub, shard), entries);
    const weight_map = Object.fromEntries(tensors.map((t) => [t.name, t.shard]));
    await writeFile(join(dir, sub, `${stem}.safetensors.index.json`), JSON.stringify({ metadata: {}, weight_map }));
  };
  await sharded('transformer', 'transformer.json', 'diffusion_pytorch_model');
  await sharded('text_encoder', 'text_encoder.json', 'model');
  await mkdir(join(dir, 'vae'), { recursive: true });
  await writeHeaderOnlyFake(join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), await shapesJsonEntries(join(rs, 'vae.json')));
  for (const [name, c] of Object.entries(configs as Record<string, { value: unknown }>)) {
    if (!name.endsWith('.json')) continue;
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), JSON.stringify(c.value));
  }
  await mkdir(join(dir, 'processor'), { recursive: true });
  const tiny = join(goldenCase('v12_e2e_tiny'), 'model', 'processor');
  if (o.tokenizer) for (const f of ['tokenizer.json.gz', 'tokenizer_config.json', 'chat_template.jinja']) await copyFile(join(tiny, f), join(dir, 'processor', f));
  else for (const f of ['tokenizer.json', 'tokenizer_config.json']) await writeFile(join(dir, 'processor', f), '{}');
  await copyFile(join(tiny, 'preprocessor_config.json'), join(dir, 'processor', 'preprocessor_config.json'));
  return dir;
}

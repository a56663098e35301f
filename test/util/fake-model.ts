/**
 * Header-only fakes of the real model directories (official layout), built from the in-repo copies of
 * ../shared/golden/real_shapes*: `step1x-edit-i1258.safetensors` (v1.0) or
 * `step1x-edit-v1p1-official.safetensors` (v1.1: the same file without `connector.scale_factor`),
 * `vae.safetensors`, and `Qwen2.5-VL-7B-Instruct/` (sharded, index, config, a placeholder tokenizer).
 * Sparse files: a 42 GB directory costs a few MB of disk.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
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

/**
 * The quality cost of TeaCache on the tiny models (README "TeaCache"): a pipeline case's DiT + VAE with its
 * fixed MLLM embeddings (default pipeline_v11_tiny: v1.1 weights, CFG truncation 0.93 as the current code;
 * pipeline_tiny: v1.0, plain CFG), 28 steps at size level 128 (more tokens than the goldens'), CFG 6, one run
 * without cache and one per threshold. Prints a markdown table: skipped steps, relative L2 of the final
 * latent and PSNR of the decoded image (u8, working size) against the uncached run. (Speed is measured
 * by the benchmarks, not here: a skipped step saves one DiT forward minus img_in and final_layer.)
 *   node dist/kernels-test/teacache-table.js [steps] [size] [case]
 * The tiny models have random weights, so the numbers show the mechanism's cost, not trained-model
 * quality.
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { Gpu } from '../src/runtime/gpu.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import type { ModelFiles } from '../src/io/model-files.js';
import { inputProcessImage } from '../src/models/qwen25vl/processor.js';
import { runDenoise, runVaeDecode, runVaeEncode } from '../src/pipeline/stages.js';
import { randnF32 } from '../src/pipeline/rng.js';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

async function main(): Promise<void> {
  const steps = Number(process.argv[2] ?? 28), size = Number(process.argv[3] ?? 128), name = process.argv[4] ?? 'pipeline_v11_tiny';
  const here = dirname(fileURLToPath(import.meta.url)); // kernels-test/ or dist/kernels-test/
  const dir = [resolve(here, `../test/golden/${name}`), resolve(here, `../../test/golden/${name}`)].find((d) => existsSync(d));
  if (!dir) throw new Error(`test/golden/${name} not found`);
  const caseJson = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
  const spec = caseJson.spec;
  // the case's own official behaviour: v2 cases truncate CFG at 0.93, the May 2025 ones never
  const cfgTruncate: number = caseJson.timesteps_truncate ?? (caseJson.generator_version === 2 ? 0.93 : 1.0);
  const files: ModelFiles = { source: dir, dit: join(dir, 'dit.safetensors'), vae: join(dir, 'vae.safetensors'), qwenDir: '', hparams: { dit: spec.dit, connector: spec.connector, ae: spec.ae } };
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const [H0, W0] = io.tensors.get('in.photo_u8')!.shape;
  const photo = { width: W0, height: H0, data: new Uint8Array(await io.readBytes('in.photo_u8')) };
  const emb = await io.readF32('in.llm_embedding'), mask = await io.readF32('in.mask');
  const T = io.tensors.get('in.mask')!.shape[1];
  await io.close();
  const g = await Gpu.create();
  const ref = inputProcessImage(photo, size);
  const lh = ref.height / 8, lw = ref.width / 8;
  const refLatent = await runVaeEncode(g, files, ref);
  const noise = randnF32(16 * lh * lw, 42);
  const run = async (threshold?: number) => {
    let skipped = 0;
    const packed = await runDenoise(g, files, {
      noise, refLatent, lh, lw, llmEmbedding: emb, mask, T, steps, cfg: 6, cfgTruncate,
      cache: threshold === undefined ? undefined : { kind: 'teacache', threshold },
      onStep: (_i, _n, sk) => void (sk && skipped++),
    });
    const img = await runVaeDecode(g, files, packed, lh, lw);
    return { packed, img, skipped };
  };
  const base = await run();
  const rows = [`| threshold | skipped steps (of ${steps}) | rel. L2 of the final latent | PSNR vs uncached (dB) |`, '|---|---|---|---|'];
  for (const th of [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) {
    const r = await run(th);
    let num = 0, den = 0, se = 0;
    for (let i = 0; i < base.packed.length; i++) {
      num += (r.packed[i] - base.packed[i]) ** 2;
      den += base.packed[i] ** 2;
    }
    for (let i = 0; i < base.img.data.length; i++) se += (r.img.data[i] - base.img.data[i]) ** 2;
    const mse = se / base.img.data.length;
    const psnr = mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
    rows.push(`| ${th} | ${r.skipped} | ${Math.sqrt(num / den).toExponential(2)} | ${Number.isFinite(psnr) ? psnr.toFixed(1) : '∞ (identical)'} |`);
  }
  process.stdout.write(`TeaCache on ${name}: ${steps} steps, size level ${size} (working ${ref.width}x${ref.height}), CFG 6 (truncation ${cfgTruncate}), seed-42 noise\n${rows.join('\n')}\n`);
  g.destroy();
}

main().then(() => setTimeout(() => process.exit(0), 50), (e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});

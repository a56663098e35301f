/**
 * Kind `e2e` (tiny_e2e): the whole edit from a model directory in the official layout, through
 * EditPipeline with the case's photo, prompt and stored noise; every stage is traced under the case's
 * names. The full pixel_values are checked as the stored rows (`in.pixel_values_row_index`) and their sum,
 * and the official sampled encode with `in.sample_eps`. tiny_e2e follows the May 2025 code, tiny_e2e_v11
 * (a v1.1 model directory) the current one (official.ts).
 */
import { join } from 'node:path';
import type { GoldenContext } from '../registry.js';
import { modelFilesInDir } from '../../io/model-files.js';
import { EditPipeline } from '../../pipeline/edit-pipeline.js';
import { runVaeEncode, type Trace } from '../../pipeline/stages.js';
import { inputProcessImage } from '../../models/qwen25vl/processor.js';
import { behaviourOfCase } from '../../pipeline/official.js';
import { parseVersion } from '../../models/dit-config.js';

export async function run(ctx: GoldenContext): Promise<void> {
  const spec = ctx.spec;
  const beh = behaviourOfCase(ctx.caseJson);
  const files = modelFilesInDir(join(ctx.caseDir, spec.model_dir ?? 'model'), undefined, beh.version ? { version: beh.version } : {});
  const [H0, W0] = ctx.io.tensors.get('in.photo_u8')!.shape;
  const photo = { width: W0, height: H0, data: new Uint8Array(await ctx.io.readBytes('in.photo_u8')) };
  const rowIndex = ctx.has('in.pixel_values_row_index') ? await ctx.inputInt('in.pixel_values_row_index') : null;
  const trace: Trace = (name, data, shape, kind) => {
    if (name === 'mid.pixel_values') {
      const D = shape[1];
      let sum = 0;
      for (const v of data) sum += v; // f64 accumulation, as the reference's sum
      ctx.emit('mid.pixel_values_sum', Float32Array.of(sum), [1]);
      if (rowIndex) {
        const rows = new Float32Array(rowIndex.length * D);
        rowIndex.forEach((r, i) => rows.set((data as Float32Array).subarray(r * D, (r + 1) * D), i * D));
        ctx.emit('mid.pixel_values_rows', rows, [rowIndex.length, D]);
      }
      return;
    }
    ctx.emit(name, data, shape, kind);
  };
  const pipe = await EditPipeline.load(files, { gpu: ctx.gpu });
  try {
    const res = await pipe.edit(
      {
        image: photo,
        instruction: spec.prompt,
        negative: spec.negative_prompt ?? '',
        steps: spec.num_steps,
        cfg: spec.cfg_guidance,
        size: spec.size_level,
        noise: await ctx.input('in.noise'),
        // first-generator cases pin the May 2025 behaviour; later ones state version and truncation
        compat: beh.compat,
        cfgTruncate: beh.cfgTruncate,
        version: spec.version !== undefined ? parseVersion(spec.version, 'spec.version') : undefined,
      },
      undefined,
      trace,
    );
    ctx.log(`e2e: ${res.workingSize.join('x')} working size, ${res.timings.total}s`);
  } finally {
    pipe.dispose();
  }
  if (ctx.has('in.sample_eps')) {
    const ref = inputProcessImage(photo, spec.size_level, beh.inputResize);
    await runVaeEncode(ctx.gpu, files, ref, { eps: await ctx.input('in.sample_eps'), trace: (n, d, s) => n === 'mid.ref_latent_sampled' && ctx.emit(n, d, s) });
  }
}

// Library usage: run an edit from Node without the CLI (after `npm run build`).
//   node examples/library.mjs [MODEL_DIR]
import { modelFilesInDir } from '../dist/src/io/model-files.js';
import { readImage, writePng } from '../dist/src/io/image.js';
import { EditPipeline } from '../dist/src/pipeline/edit-pipeline.js';

const dir = process.argv[2] ?? new URL('../test/golden/tiny_e2e_v11/model', import.meta.url).pathname;
const pipe = await EditPipeline.load(modelFilesInDir(dir));
try {
  const image = await readImage(new URL('./input.png', import.meta.url).pathname);
  // run() is an async generator of progress events; its return value is the result
  const it = pipe.run({ image, instruction: 'add a red scarf', size: 80, steps: 4, cfg: 6, seed: 42 });
  let r;
  while (!(r = await it.next()).done) if (r.value.message) console.error(`${r.value.stage}: ${r.value.message}`);
  await writePng('/tmp/step1x-library.png', r.value.image, { text: r.value.parameters });
  console.error(`wrote /tmp/step1x-library.png, timings ${JSON.stringify(r.value.timings)}`);
} finally {
  pipe.dispose();
}

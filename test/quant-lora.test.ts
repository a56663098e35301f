/**
 * fp8 / q8 / q4 weights and LoRA end to end: the fp8_tiny and lora_tiny goldens (nothing skipped), a
 * community-layout fp8 file (norms BF16, the rest F8_E4M3) built here matching the all-fp8 run bit for
 * bit, `--weights` conversion error vs the bf16 reference (q8 <= 1e-2), LoRA unmerged on q8, `convert`
 * output loading directly and shown by `inspect`, and the bad inputs (truncated or mis-shaped scale
 * tensor, unknown format, LoRA of the wrong shape or not a LoRA) as one-line errors before GPU work.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { getGpu, releaseGpu } from '../kernels-test/harness.js';
import { runGolden } from '../src/golden/runner.js';
import { SafetensorsFile, buildHeader, writeSafetensors, type WriteTensor } from '../src/io/safetensors.js';
import { Checkpoint } from '../src/io/checkpoint.js';
import { convertCheckpoint } from '../src/io/convert.js';
import { relL2 } from '../src/io/quant.js';
import { f32ArrayToBf16 } from '../src/runtime/half.js';
import '../src/golden/kinds/index.js';

const CLI = join(REPO_ROOT, 'bin/step1x.js');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
function step1x(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.split('\n').filter((l) => l && !l.startsWith('Warning:')).join('\n') };
}

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'step1x-quant-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  releaseGpu();
});

/** A copy of a golden case directory with its case.json edited and/or its DiT replaced. */
function caseCopy(name: string, tag: string, edit: (cj: any) => void = () => undefined, dit?: string): string {
  const src = goldenCase(name), dst = join(dir, `${name}-${tag}`);
  spawnSync('mkdir', ['-p', dst]);
  for (const f of ['io.safetensors', 'dit.safetensors', 'lora.safetensors']) {
    try {
      statSync(join(src, f));
      copyFileSync(join(src, f), join(dst, f));
    } catch {
      /* not in this case */
    }
  }
  if (dit) copyFileSync(dit, join(dst, 'dit.safetensors'));
  const cj = JSON.parse(readFileSync(join(src, 'case.json'), 'utf8'));
  edit(cj);
  writeFileSync(join(dst, 'case.json'), JSON.stringify(cj));
  return dst;
}

async function run(caseDir: string) {
  const g = await getGpu();
  const r = await runGolden(caseDir, { gpu: g, log: () => undefined });
  const io = await SafetensorsFile.open(join(caseDir, 'io.safetensors'));
  const ref = await io.readF32('out.pred');
  await io.close();
  return { ...r, pred: Float32Array.from(r.emitted.get('out.pred')!.data), ref };
}

describe('goldens (GPU)', () => {
  for (const name of ['fp8_tiny', 'lora_tiny'])
    test(`${name}: every tensor within case.json tolerances, nothing skipped`, async () => {
      const r = await run(goldenCase(name));
      const bad = r.details.filter((d) => !d.pass || d.skipped).map((d) => `${d.name} ${d.note ?? ''} maxAbs ${d.maxAbs}`);
      expect(bad).toEqual([]);
      if (name === 'lora_tiny') expect(r.details.filter((d) => d.name.startsWith('out.merged.')).length).toBe(7);
    });

  test('community fp8 layout (keys containing "norm" in BF16, the rest F8_E4M3) equals the all-fp8 run', async () => {
    const src = await SafetensorsFile.open(join(goldenCase('fp8_tiny'), 'dit.safetensors'));
    const out: Record<string, WriteTensor> = {};
    let norms = 0;
    for (const k of src.keys()) {
      const t = src.info(k);
      if (k.includes('norm')) {
        out[k] = { dtype: 'BF16', shape: t.shape, data: f32ArrayToBf16(await src.readF32(k)) }; // fp8 values are bf16 values
        norms++;
      } else out[k] = { dtype: t.dtype, shape: t.shape, data: await src.readBytes(k) };
    }
    await src.close();
    expect(norms).toBeGreaterThan(10);
    const file = join(dir, 'community-fp8.safetensors');
    await writeSafetensors(file, out);
    const mixed = await run(caseCopy('fp8_tiny', 'community', () => undefined, file));
    const all = await run(goldenCase('fp8_tiny'));
    expect(mixed.report.pass).toBe(true);
    expect(relL2(mixed.pred, all.pred)).toBe(0);
  });

  test('--weights fp8 / q8 / q4 on dit_tiny: error of out.pred vs the bf16 reference (q8 <= 1e-2)', async () => {
    const err: Record<string, number> = {};
    for (const w of ['bf16', 'fp8', 'q8', 'q4']) {
      const r = await run(caseCopy('dit_tiny', w, (cj) => (cj.spec.weights = w)));
      err[w] = relL2(r.pred, r.ref);
    }
    process.stderr.write(`  rel L2 of out.pred vs reference: ${JSON.stringify(err)}\n`);
    expect(err.bf16).toBeLessThan(1e-5);
    expect(err.fp8).toBeLessThan(0.1);
    expect(err.q8).toBeLessThanOrEqual(1e-2);
    expect(err.q4).toBeLessThan(0.2);
    expect(err.q4).toBeGreaterThan(err.q8);
  });

  test('LoRA unmerged on q8 weights follows the merged bf16 reference', async () => {
    const q8 = await run(caseCopy('lora_tiny', 'q8', (cj) => (cj.spec.weights = 'q8')));
    const noLora = await run(caseCopy('lora_tiny', 'q8-nolora', (cj) => ((cj.spec.weights = 'q8'), delete cj.lora)));
    const e = relL2(q8.pred, q8.ref), e0 = relL2(noLora.pred, q8.ref);
    process.stderr.write(`  lora_tiny q8: rel L2 with unmerged LoRA ${e.toExponential(3)}, without LoRA ${e0.toExponential(3)}\n`);
    expect(e).toBeLessThanOrEqual(1e-2);
    expect(e0).toBeGreaterThan(5 * e); // the adapters are really applied
  });

  test('convert --to q8 writes a file that loads directly, equals on-load conversion, and inspect shows it', async () => {
    const out = join(dir, 'dit-q8.safetensors');
    const r = step1x(['convert', '--to', 'q8', join(goldenCase('dit_tiny'), 'dit.safetensors'), out, '--quiet']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const ck = await Checkpoint.open(out);
    expect(ck.files[0].metadata['step1x.weights']).toBe('q8');
    expect(ck.info('double_blocks.0.img_attn.qkv.weight').quant?.format).toBe('q8');
    expect(ck.info('double_blocks.0.img_attn.qkv.weight').shape).toEqual([384, 128]);
    expect(ck.has('double_blocks.0.img_attn.qkv.weight.qscale')).toBe(false); // scales are attached, not keys
    await ck.close();
    const ins = step1x(['inspect', out]);
    expect(ins.stdout).toMatch(/weights q8 \(step1x convert, blocks of 32\)/);
    expect(ins.stdout).toMatch(/double_blocks\.0\.img_attn\.qkv\.weight\s+q8/);
    const direct = await run(caseCopy('dit_tiny', 'q8file', () => undefined, out));
    const onLoad = await run(caseCopy('dit_tiny', 'q8load', (cj) => (cj.spec.weights = 'q8')));
    expect(relL2(direct.pred, onLoad.pred)).toBe(0);
    const fp8 = join(dir, 'dit-fp8.safetensors');
    await convertCheckpoint(join(goldenCase('dit_tiny'), 'dit.safetensors'), fp8, 'fp8');
    expect(step1x(['inspect', fp8]).stdout).toMatch(/weights fp8/);
  });
});

describe('bad inputs: one line, non-zero exit, before GPU work', () => {
  const q8File = async (name: string, scaleShape: number[], meta: Record<string, string> = { 'step1x.weights': 'q8' }) => {
    const p = join(dir, name);
    await writeSafetensors(p, {
      'a.weight': { dtype: 'I8', shape: [2, 64], data: new Int8Array(128) },
      'a.weight.qscale': { dtype: 'F16', shape: scaleShape, data: new Uint16Array(scaleShape[0] * scaleShape[1]) },
    }, meta);
    return p;
  };
  test('mis-shaped, truncated scale tensors and an unknown format', async () => {
    const mis = step1x(['inspect', await q8File('mis.safetensors', [2, 3])]);
    expect(mis.code).toBe(4);
    expect(mis.stderr).toMatch(/^step1x: error: .*mis\.safetensors: scale tensor "a\.weight\.qscale" is F16 \[2,3\], expected F16 \[2,2\] for "a\.weight" \[2,64\]$/);
    // codes first, scales last (buildHeader keeps this order), then cut into the scale bytes
    const tr = join(dir, 'trunc.safetensors');
    const { prefix, dataBytes } = buildHeader([{ name: 'a.weight', dtype: 'I8', shape: [2, 64] }, { name: 'a.weight.qscale', dtype: 'F16', shape: [2, 2] }], { 'step1x.weights': 'q8' });
    writeFileSync(tr, Buffer.concat([Buffer.from(prefix), Buffer.alloc(dataBytes - 3)]));
    const t = step1x(['inspect', tr]);
    expect(t.code).not.toBe(0);
    expect(t.stderr).toMatch(/^step1x: error: .*trunc\.safetensors: .*"a\.weight\.qscale".*truncated\?\)$/);
    const unk = step1x(['inspect', await q8File('unk.safetensors', [2, 2], { 'step1x.weights': 'q5' })]);
    expect(unk.code).toBe(4);
    expect(unk.stderr).toMatch(/^step1x: error: .*unk\.safetensors: unknown quantization format "q5"/);
    for (const r of [mis, t, unk]) expect(r.stderr.split('\n')).toHaveLength(1);
  });

  test('LoRA with a wrong shape, and a file that is not a LoRA', async () => {
    const model = join(goldenCase('tiny_e2e'), 'model');
    const ck = await Checkpoint.open(join(model, 'step1x-edit-i1258.safetensors'));
    const [N, K] = ck.info('double_blocks.0.img_attn.qkv.weight').shape;
    await ck.close();
    const bad = join(dir, 'bad-lora.safetensors');
    await writeSafetensors(bad, {
      'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight': { dtype: 'F32', shape: [2, K], data: new Float32Array(2 * K) },
      'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight': { dtype: 'F32', shape: [N + 1, 2], data: new Float32Array(2 * (N + 1)) },
    });
    const r = step1x(['plan', '--model', model, '--lora', `${bad}:0.5`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`step1x: error: --lora ${bad}: "lora_unet_double_blocks_0_img_attn_qkv" (up [${N + 1}, 2] @ down [2, ${K}] = [${N + 1},${K}]) does not fit "double_blocks.0.img_attn.qkv.weight" [${N},${K}]`);
    const notLora = step1x(['plan', '--model', model, '--lora', join(model, 'vae.safetensors')]);
    expect(notLora.code).toBe(2);
    expect(notLora.stderr).toMatch(/^step1x: error: --lora .*vae\.safetensors: not a LoRA: no "<module>\.lora_down\.weight"/);
    const png = join(dir, 'x.png');
    writeFileSync(png, 'not a safetensors file at all');
    const edit = step1x(['edit', join(goldenCase('pipeline_tiny'), 'input.png'), 'x', '--model', model, '--lora', png, '-o', join(dir, 'o.png')]);
    expect(edit.code).toBe(2);
    expect(edit.stderr.split('\n')).toHaveLength(1);
    expect(edit.stderr).toMatch(/--lora .*x\.png: not a valid safetensors file/);
  });
});

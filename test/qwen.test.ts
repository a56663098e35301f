/**
 * Qwen2.5-VL: host-side index logic (pure TS), the loader (real key set, header-only fake of the real
 * sharded checkpoint, residency plan), the full model against the qwen_vl golden cases (resident and
 * streamed), the embedder batch, the tiny_e2e model directory, and one real-size decoder layer.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getGpu, releaseGpu, compare, rng } from '../kernels-test/harness.js';
import type { Gpu } from '../src/runtime/gpu.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { shapesJsonEntries } from '../src/io/checkpoint.js';
import { Linear } from '../src/nn/linear.js';
import { mropeCosSin } from '../src/ops/rope-tables.js';
import type { GoldenContext } from '../src/golden/registry.js';
import { runQwenVl } from '../src/golden/kinds/qwen_vl.js';
import { loadQwenConfig } from '../src/models/qwen25vl/config.js';
import {
  getRopeIndex, getWindowIndex, visionRotPosIds, invertPermutation, cuSeqlensToSegments, type GridThw,
} from '../src/models/qwen25vl/positions.js';
import { qwenExpectedShapes, openQwenCheckpoint, residencyPlan, DecoderLayerWeights, LM_HEAD } from '../src/models/qwen25vl/loader.js';
import { QwenVL, type QwenLoadOptions } from '../src/models/qwen25vl/model.js';
import { embedPrompts } from '../src/models/qwen25vl/embedder.js';
import { decoderLayer, type TextSequence } from '../src/models/qwen25vl/text.js';
import { goldenCase, REPO_ROOT } from './util/golden-path.js';
import { writeFakeShardedQwen } from './util/fake-checkpoint.js';

afterAll(releaseGpu);

const CASES = ['qwen_vl_tiny', 'qwen_vl_tiny_mask'];

function eqInt(name: string, got: ArrayLike<number>, ref: ArrayLike<number>): void {
  if (got.length !== ref.length) throw new Error(`${name}: length ${got.length} vs ref ${ref.length}`);
  for (let i = 0; i < ref.length; i++) if (got[i] !== ref[i]) throw new Error(`${name}: first difference at ${i}: got ${got[i]}, ref ${ref[i]}`);
}

describe('qwen25vl host-side index logic vs golden', () => {
  for (const name of CASES) {
    test(`${name}: rot pos ids, window index, cu_window_seqlens, position ids, rope delta`, async () => {
      const dir = goldenCase(name);
      const cfg = await loadQwenConfig(dir);
      const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
      try {
        const grid = await io.readI32('in.image_grid_thw');
        const grids: GridThw[] = [[grid[0], grid[1], grid[2]]];
        const v = cfg.vision;
        eqInt('vision_rot_pos_ids', visionRotPosIds(grids, v.spatialMergeSize), await io.readI32('mid.vision_rot_pos_ids'));
        const { windowIndex, cuWindowSeqlens } = getWindowIndex(grids, v.windowSize, v.spatialMergeSize, v.patchSize);
        eqInt('vision_window_index', windowIndex, await io.readI32('mid.vision_window_index'));
        eqInt('vision_cu_window_seqlens', cuWindowSeqlens, await io.readI32('mid.vision_cu_window_seqlens'));
        const inv = invertPermutation(windowIndex);
        for (let i = 0; i < inv.length; i++) expect(windowIndex[inv[i]]).toBe(i);
        const ids = await io.readI32('in.input_ids');
        const mask = await io.readI32('in.attention_mask');
        const r = getRopeIndex(ids, mask, grids, { ...cfg, spatialMergeSize: v.spatialMergeSize });
        eqInt('position_ids', r.positionIds, await io.readI32('mid.position_ids'));
        eqInt('rope_deltas', [r.ropeDelta], await io.readI32('mid.rope_deltas'));
      } finally {
        await io.close();
      }
    });
  }

  test('window index pads exactly like torch (divisible grid, multi-frame, two images)', () => {
    // 16x16 patches -> 8x8 merged units -> 2x2 windows of 4x4 (+ an empty padded row/col in torch)
    const a = getWindowIndex([[1, 16, 16]], 112, 2, 14);
    expect(a.cuWindowSeqlens).toEqual([0, 64, 128, 192, 256]);
    expect(Array.from(a.windowIndex.slice(0, 5))).toEqual([0, 1, 2, 3, 8]);
    const b = getWindowIndex([[2, 4, 10], [1, 2, 2]], 112, 2, 14);
    // frame: 2x5 merged units -> windows of widths 4 and 1; two frames; then the 1-unit image
    expect(b.cuWindowSeqlens).toEqual([0, 32, 40, 72, 80, 84]);
    expect(Array.from(b.windowIndex)).toEqual([0, 1, 2, 3, 5, 6, 7, 8, 4, 9, 10, 11, 12, 13, 15, 16, 17, 18, 14, 19, 20]);
    expect(Array.from(cuSeqlensToSegments([0, 2, 5], 5))).toEqual([0, 0, 1, 1, 1]);
  });

  test('getRopeIndex: masked tokens get 1 and are skipped', () => {
    const o = { imageTokenId: 9, videoTokenId: 10, visionStartTokenId: 8, spatialMergeSize: 2 };
    const ids = Int32Array.from([5, 0, 8, 9, 9, 9, 9, 9, 9, 7, 0, 6]);
    const mask = Int32Array.from(ids, (v) => (v > 0 ? 1 : 0));
    const r = getRopeIndex(ids, mask, [[1, 4, 6]], o);
    // unmasked: 5 ->0, 8 ->1, image 2x3 at base 2, 7 -> 2+2+1 = 5, 6 -> 6
    expect(Array.from(r.positionIds.slice(0, 12))).toEqual([0, 1, 1, 2, 2, 2, 2, 2, 2, 5, 1, 6]);
    expect(Array.from(r.positionIds.slice(12, 24))).toEqual([0, 1, 1, 2, 2, 2, 3, 3, 3, 5, 1, 6]);
    expect(Array.from(r.positionIds.slice(24))).toEqual([0, 1, 1, 2, 3, 4, 2, 3, 4, 5, 1, 6]);
    expect(r.ropeDelta).toBe(7 - 12);
  });
});

// ---- loader: key set, header-only fake of the real sharded checkpoint ------------------------------

const REAL_QWEN = goldenCase('real_shapes_qwen');

describe('qwen25vl loader', () => {
  test('expected key set from the real config equals real_shapes_qwen/params.json (729 incl. lm_head)', async () => {
    const cfg = await loadQwenConfig(join(REAL_QWEN, 'config.json'));
    const exp = qwenExpectedShapes(cfg);
    const real = await shapesJsonEntries(join(REAL_QWEN, 'params.json'));
    expect(real.length).toBe(729);
    expect(exp.size).toBe(728);
    for (const e of real) {
      if (e.name === LM_HEAD) continue;
      expect([e.name, exp.get(e.name)]).toEqual([e.name, e.shape]);
    }
    expect(cfg.text.headDim).toBe(128);
    expect(cfg.text.mropeSection).toEqual([16, 24, 24]);
    expect(cfg.vision.fullattBlockIndexes).toEqual([7, 15, 23, 31]);
  });

  test('header-only fake of the real sharded checkpoint loads; removed key / changed shape fail by name', async () => {
    const cfg = await loadQwenConfig(join(REAL_QWEN, 'config.json'));
    const params = await shapesJsonEntries(join(REAL_QWEN, 'params.json'));
    const root = await mkdtemp(join(tmpdir(), 'qwen-fake-'));
    try {
      const ok = join(root, 'ok');
      const { shards } = await writeFakeShardedQwen(ok, params);
      expect(shards.length).toBeGreaterThan(1);
      await copyFile(join(REAL_QWEN, 'config.json'), join(ok, 'config.json'));
      const ck = await openQwenCheckpoint(ok, cfg);
      expect(ck.keys().length).toBe(729);
      // residency under budgets, from the real byte sizes (vision blocks 1.26 GiB, text layers 13.2 GiB)
      const { QwenVisionTower } = await import('../src/models/qwen25vl/vision.js');
      const { QwenTextModel } = await import('../src/models/qwen25vl/text.js');
      const vs = QwenVisionTower.sizes(ck, cfg.vision), ts = QwenTextModel.sizes(ck, cfg.text);
      expect(vs.blocks + vs.fixed + ts.blocks + ts.fixed).toBe(2 * (8292166656 - 152064 * 3584 * 2)); // all but embed_tokens, lm_head
      const GiB = 2 ** 30;
      expect(residencyPlan(vs, ts, 28, 16 * GiB)).toEqual({ streamVision: false, streamText: false });
      expect(residencyPlan(vs, ts, 28, 3 * GiB)).toEqual({ streamVision: false, streamText: true });
      expect(residencyPlan(vs, ts, 28, 1 * GiB)).toEqual({ streamVision: true, streamText: true });
      expect(residencyPlan(vs, ts, 28, Infinity)).toEqual({ streamVision: false, streamText: false }); // no budget
      // a few embedding rows are read by byte range (sparse file: zeros), never the whole table
      const { gatherEmbeddingRows } = await import('../src/models/qwen25vl/loader.js');
      const rows = await gatherEmbeddingRows(ck, Int32Array.from([0, 151655, 152063]));
      expect(rows.length).toBe(3 * 3584);
      await ck.close();

      const removed = join(root, 'removed');
      await writeFakeShardedQwen(removed, params.filter((p) => p.name !== 'model.layers.5.mlp.up_proj.weight'));
      await expect(openQwenCheckpoint(removed, cfg)).rejects.toThrow(/missing: model\.layers\.5\.mlp\.up_proj\.weight \[18944,3584\]/);

      const changed = join(root, 'changed');
      await writeFakeShardedQwen(changed, params.map((p) => (p.name === 'visual.blocks.3.attn.qkv.bias' ? { ...p, shape: [3841] } : p)));
      await expect(openQwenCheckpoint(changed, cfg)).rejects.toThrow(/visual\.blocks\.3\.attn\.qkv\.bias is \[3841\], expected \[3840\]/);

      const noHead = join(root, 'nohead');
      await writeFakeShardedQwen(noHead, params.filter((p) => p.name !== LM_HEAD));
      await (await openQwenCheckpoint(noHead, cfg)).close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

// ---- GPU: the whole model against the qwen_vl golden cases ----------------------------------------

interface Emitted { data: Float32Array | Int32Array | Uint8Array; shape: number[]; kind: string }

/** A GoldenContext over a case directory that records what the kind emits (no runner needed). */
async function runCase(g: Gpu, name: string, load: QwenLoadOptions = {}): Promise<{ em: Map<string, Emitted>; io: SafetensorsFile; caseJson: any; logs: string[] }> {
  const dir = goldenCase(name);
  const caseJson = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
  const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
  const em = new Map<string, Emitted>();
  const ctx: GoldenContext = {
    caseDir: dir, spec: caseJson.spec, caseJson, io, gpu: g,
    input: (n: string) => io.readF32(n),
    inputInt: (n: string) => io.readI32(n),
    has: (n: string) => io.tensors.has(n),
    emit: (n: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind = 'f32') => {
      if (em.has(n)) throw new Error(`${n} emitted twice`);
      em.set(n, { data: data.slice(), shape, kind });
    },
    log: (m: string) => logs.push(m),
  } as unknown as GoldenContext;
  const logs: string[] = [];
  await runQwenVl(ctx, load);
  return { em, io, caseJson, logs };
}

function tolFor(caseJson: any, name: string): any {
  for (const t of caseJson.tolerance) {
    const re = new RegExp('^' + t.match.split('*').map((s: string) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
    if (re.test(name)) return t;
  }
  throw new Error(`no tolerance for ${name}`);
}

describe('qwen25vl golden (GPU)', () => {
  const resident = new Map<string, Map<string, Emitted>>();
  for (const name of CASES) {
    test(`${name}: every reference tensor within the case tolerance`, async () => {
      const g = await getGpu();
      const live0 = g.pool.liveBytes;
      const { em, io, caseJson } = await runCase(g, name);
      resident.set(name, em);
      const lines: string[] = [];
      let failed = 0;
      for (const ref of Object.keys(caseJson.tensors).filter((n) => n.startsWith('mid.') || n.startsWith('out.'))) {
        const got = em.get(ref);
        if (!got) { lines.push(`${ref}: NOT EMITTED`); failed++; continue; }
        const info = io.tensors.get(ref)!;
        expect([ref, got.shape]).toEqual([ref, info.shape]);
        const t = tolFor(caseJson, ref);
        const r = t.exact
          ? compare(ref, Float64Array.from(got.data), Float64Array.from(await io.readI64AsNumber(ref)), 0, 0)
          : compare(ref, got.data, await io.readF32(ref), t.atol, t.rtol);
        lines.push(r.msg);
        if (!r.pass) failed++;
      }
      await io.close();
      console.log(`${name}\n  ${lines.join('\n  ')}`);
      expect(failed).toBe(0);
      expect(g.pool.liveBytes).toBe(live0); // everything freed
    });
  }

  test('qwen_vl_tiny_mask streamed under a 1-byte budget gives identical results', async () => {
    const g = await getGpu();
    const live0 = g.pool.liveBytes;
    const { em, logs, io } = await runCase(g, 'qwen_vl_tiny_mask', { gpuBudgetBytes: 1 });
    await io.close();
    expect(logs.join('\n')).toMatch(/streamed \{"vision":true,"text":true\}/);
    expect(g.pool.liveBytes).toBe(live0);
    const ref = resident.get('qwen_vl_tiny_mask')!;
    expect(ref).toBeDefined();
    for (const [n, e] of ref) {
      const s = em.get(n)!;
      expect([n, s.shape]).toEqual([n, e.shape]);
      const d = compare(n, s.data, e.data, 0, 0);
      if (!d.pass) throw new Error(`streamed differs: ${d.msg}`);
    }
  });
});

describe('qwen25vl embedder batch (GPU)', () => {
  test('[prompt, shorter prompt] layer-major with one shared vision pass equals separate runs', async () => {
    const g = await getGpu();
    const dir = goldenCase('qwen_vl_tiny');
    const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    const ids = await io.readI32('in.input_ids');
    const px = await io.readF32('in.pixel_values');
    const gt = await io.readI32('in.image_grid_thw');
    await io.close();
    const grids: GridThw[] = [[gt[0], gt[1], gt[2]]];
    // second prompt: same image, caption cut short (ids up to 10 tokens after <|vision_end|>)
    const ve = ids.indexOf(1010);
    const short = Int32Array.from([...ids.slice(0, ve + 10), ...ids.slice(ids.length - 5)]);
    const model = await QwenVL.load(g, dir, { weights: join(dir, 'model.safetensors') });
    try {
      const both = await embedPrompts(g, model, [{ inputIds: ids, pixelValues: px, gridThw: grids }, { inputIds: short, pixelValues: px, gridThw: grids }], { maxLength: 96 });
      const one = await embedPrompts(g, model, [{ inputIds: ids, pixelValues: px, gridThw: grids }], { maxLength: 96 });
      const two = await embedPrompts(g, model, [{ inputIds: short, pixelValues: px, gridThw: grids }], { maxLength: 96 });
      const D = both.hidden, M = 96;
      expect(compare('row0', both.embeddings.subarray(0, M * D), one.embeddings, 0, 0).pass).toBe(true);
      expect(compare('row1', both.embeddings.subarray(M * D), two.embeddings, 0, 0).pass).toBe(true);
      expect(Array.from(both.mask.subarray(M))).toEqual(Array.from(two.mask));
      const kept = short.length - 217;
      expect(two.mask.reduce((a, b) => a + b, 0)).toBe(kept);
      expect(two.embeddingsF32.subarray(kept * D).every((v) => v === 0)).toBe(true);
      for (let i = 0; i < kept * D; i++) expect(Math.abs(two.embeddings[i] - two.embeddingsF32[i])).toBeLessThanOrEqual(Math.abs(two.embeddingsF32[i]) * 2 ** -8);
    } finally {
      await model.dispose();
    }
  });
});

describe('qwen25vl real-layout load and crop', () => {
  test('QwenVL.load on a header-only fake of the real checkpoint: 256 MiB budget streams both towers, frees everything', async () => {
    const g = await getGpu();
    const params = await shapesJsonEntries(join(REAL_QWEN, 'params.json'));
    const root = await mkdtemp(join(tmpdir(), 'qwen-fake-load-'));
    try {
      await writeFakeShardedQwen(root, params);
      await copyFile(join(REAL_QWEN, 'config.json'), join(root, 'config.json'));
      const live0 = g.pool.liveBytes;
      const m = await QwenVL.load(g, root, { gpuBudgetBytes: 256 * 2 ** 20 });
      expect(m.streamed).toEqual({ vision: true, text: true });
      // resident: patch embed (bf16 [1280, 1176]), merger, final norm — never embed_tokens
      const resident = g.pool.liveBytes - live0;
      expect(resident).toBeLessThan(100 * 2 ** 20);
      expect(m.visual.fixed.patch_embed.proj.weight.value.shape).toEqual([1280, 3, 2, 14, 14]);
      expect(m.visual.fixed.patch_embed.proj.weight.value.dtype).toBe('bf16');
      await m.dispose();
      expect(g.pool.liveBytes).toBe(live0);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('cropInto: drop 217, keep at most max_length, zero pad, bf16 rounding', async () => {
    const { cropInto } = await import('../src/models/qwen25vl/embedder.js');
    const D = 3, M = 4, drop = 2;
    const mk = () => ({ embeddings: new Float32Array(2 * M * D), embeddingsF32: new Float32Array(2 * M * D), mask: new Int32Array(2 * M), batch: 2, maxLength: M, hidden: D });
    const o = mk();
    const long = Float32Array.from({ length: 9 * D }, (_, i) => 1 + i / 1000); // L = 9 > drop + M
    const short = Float32Array.from({ length: 5 * D }, (_, i) => -i - 0.1234567);
    cropInto(o, 0, long, 9, drop);
    cropInto(o, 1, short, 5, drop);
    expect(Array.from(o.mask)).toEqual([1, 1, 1, 1, 1, 1, 1, 0]);
    expect(Array.from(o.embeddingsF32.subarray(0, M * D))).toEqual(Array.from(long.subarray(drop * D, (drop + M) * D)));
    expect(Array.from(o.embeddingsF32.subarray(M * D + 3 * D))).toEqual([0, 0, 0]);
    expect(o.embeddings[M * D]).toBe(-6.125); // -6.1234567 rounded to bf16
    expect(() => cropInto(mk(), 0, short, 2, drop)).toThrow(/not more than the 2 dropped/);
  });
});

describe('qwen25vl on the tiny_e2e model directory (sharded, real vocabulary)', () => {
  test('[prompt, negative] from the stored vision_out: llm_last_hidden.* and llm_embedding / mask', async () => {
    const g = await getGpu();
    const dir = goldenCase('tiny_e2e');
    const caseJson = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
    const io = await SafetensorsFile.open(join(dir, 'io.safetensors'));
    try {
      const gt = await io.readI32('mid.image_grid_thw');
      const grids: GridThw[] = [[gt[0], gt[1], gt[2]]];
      const vis = await io.readF32('mid.vision_out');
      const ids = [await io.readI32('mid.input_ids.cond'), await io.readI32('mid.input_ids.uncond')];
      const m = await QwenVL.load(g, join(dir, caseJson.spec.model_dir ?? 'model', 'Qwen2.5-VL-7B-Instruct'));
      try {
        const finals: Float32Array[] = [];
        const res = await embedPrompts(g, m, ids.map((inputIds) => ({ inputIds, pixelValues: null, gridThw: grids, imageEmbeds: vis })), {
          maxLength: caseJson.spec.max_length ?? 640,
          onFinalNorm: (_b, d) => void finals.push(d.slice()),
        });
        const msgs: string[] = [];
        let bad = 0;
        for (const [i, n] of ['mid.llm_last_hidden.cond', 'mid.llm_last_hidden.uncond'].entries()) {
          const t = tolFor(caseJson, n);
          const r = compare(n, finals[i], await io.readF32(n), t.atol, t.rtol);
          msgs.push(r.msg);
          if (!r.pass) bad++;
        }
        const t = tolFor(caseJson, 'mid.llm_embedding');
        const r = compare('mid.llm_embedding', res.embeddings, await io.readF32('mid.llm_embedding'), t.atol, t.rtol);
        msgs.push(r.msg);
        if (!r.pass) bad++;
        console.log(msgs.join('\n'));
        expect(bad).toBe(0);
        expect(Array.from(res.mask)).toEqual(Array.from(await io.readI32('mid.mask')));
      } finally {
        await m.dispose();
      }
    } finally {
      await io.close();
    }
  });
});

// ---- one REAL-size decoder layer (MLP weights 129.5 MiB > the 128 MiB binding limit) vs host f64 ----

describe('qwen25vl real-size decoder layer (GPU)', () => {
  test('D 3584, MLP 18944, 28/4 heads, Dh 128, L 3 with a masked token: matches host f64', async () => {
    const g = await getGpu();
    const c = (await loadQwenConfig(join(REAL_QWEN, 'config.json'))).text;
    const D = c.hiddenSize, I = c.intermediateSize, H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, Dh = c.headDim, L = 3;
    const KV = Hkv * Dh;
    const r = rng(77);
    const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
    /**
     * random bf16 bits in [off - s, off + s): a seeded block of 2^20 - 3 values tiled with set() (JS loops
     * over 68 M elements are slow under jest's vm; the odd period keeps rows from repeating)
     */
    const bf = (n: number, s: number, off = 0) => {
      const block = new Uint16Array(Math.min(n, (1 << 20) - 3));
      for (let i = 0; i < block.length; i++) {
        f32[0] = off + (r() * 2 - 1) * s;
        block[i] = u32[0] >>> 16;
      }
      const bits = new Uint16Array(n);
      for (let o = 0; o < n; o += block.length) bits.set(o + block.length <= n ? block : block.subarray(0, n - o), o);
      return bits;
    };
    const wide = (bits: Uint16Array) => new Float32Array(new Uint32Array(Array.from(bits, (b) => b << 16)).buffer);
    const tg = Date.now();
    const W = {
      ln1: bf(D, 0.2, 1), ln2: bf(D, 0.2, 1), q: bf(D * D, 0.03), qb: bf(D, 0.1), k: bf(KV * D, 0.03), kb: bf(KV, 0.1),
      v: bf(KV * D, 0.03), vb: bf(KV, 0.1), o: bf(D * D, 0.02), gate: bf(I * D, 0.03), up: bf(I * D, 0.03), down: bf(D * I, 0.01),
    };
    const genMs = Date.now() - tg;
    const saved = g.maxBindingBytes;
    g.maxBindingBytes = 128 * 2 ** 20; // lavapipe's limit, on every device
    const up = (b: Uint16Array, shape: number[]) => g.upload(b, shape, 'bf16');
    // the declared layer, its parameters given directly (Linears built from the tensors)
    const w = new DecoderLayerWeights(c);
    w.input_layernorm.weight.set(up(W.ln1, [D]));
    w.post_attention_layernorm.weight.set(up(W.ln2, [D]));
    Object.assign(w.self_attn, { q_proj: new Linear(up(W.q, [D, D]), up(W.qb, [D])), k_proj: new Linear(up(W.k, [KV, D]), up(W.kb, [KV])),
      v_proj: new Linear(up(W.v, [KV, D]), up(W.vb, [KV])), o_proj: new Linear(up(W.o, [D, D])) });
    Object.assign(w.mlp, { gate_proj: new Linear(up(W.gate, [I, D])), up_proj: new Linear(up(W.up, [I, D])), down_proj: new Linear(up(W.down, [D, I])) });
    expect(w.mlp.gate_proj.weight.byteLength).toBeGreaterThan(g.maxBindingBytes);
    const h = Float32Array.from({ length: L * D }, () => (r() * 2 - 1) * 2);
    const pos = Int32Array.from([0, 1, 2, 0, 1, 5, 0, 1, 6]); // [3, L] t/h/w (distinct axes), token 1 masked (position 1)
    const mask = Float32Array.from([1, 0, 1]);
    const { cos, sin } = mropeCosSin(pos, 1, L, Dh, c.ropeTheta, [...c.mropeSection]);
    const s: TextSequence = { h: g.upload(h, [1, L, D]), cos: g.upload(cos, [1, L, Dh]), sin: g.upload(sin, [1, L, Dh]),
      keyMask: g.upload(mask, [1, L]), queryMask: g.upload(mask, [1, L]) };
    const t0 = Date.now();
    const out = decoderLayer(c, w, s);
    const got = await g.readF32(out);
    const gpuMs = Date.now() - t0;
    out.dispose();
    for (const t of [s.h, s.cos, s.sin, s.keyMask!, s.queryMask!]) t.dispose();
    w.dispose();
    g.maxBindingBytes = saved;

    const tr = Date.now();
    // host reference in f64 (weights are the exact bf16 values)
    const lin = (x: Float64Array, M: number, K: number, wb: Uint16Array, N: number, bb?: Uint16Array) => {
      const y = new Float64Array(M * N), wr = new Float32Array(K), wu = new Uint32Array(wr.buffer);
      for (let n = 0; n < N; n++) {
        for (let k = 0; k < K; k++) wu[k] = wb[n * K + k] << 16;
        const b = bb ? wide(bb.subarray(n, n + 1))[0] : 0;
        for (let m = 0; m < M; m++) {
          let acc = 0;
          for (let k = 0; k < K; k++) acc += x[m * K + k] * wr[k];
          y[m * N + n] = acc + b;
        }
      }
      return y;
    };
    const rms = (x: Float64Array, wb: Uint16Array) => {
      const wv = wide(wb), y = new Float64Array(x.length);
      for (let m = 0; m < L; m++) {
        let ss = 0;
        for (let d = 0; d < D; d++) ss += x[m * D + d] ** 2;
        const inv = 1 / Math.sqrt(ss / D + c.rmsNormEps);
        for (let d = 0; d < D; d++) y[m * D + d] = x[m * D + d] * inv * wv[d];
      }
      return y;
    };
    const rope = (x: Float64Array, heads: number) => {
      const y = new Float64Array(x.length), half = Dh / 2;
      for (let l = 0; l < L; l++) for (let hh = 0; hh < heads; hh++) for (let d = 0; d < Dh; d++) {
        const i = (l * heads + hh) * Dh;
        const rh = d < half ? -x[i + d + half] : x[i + d - half];
        y[i + d] = x[i + d] * cos[l * Dh + d] + rh * sin[l * Dh + d];
      }
      return y;
    };
    const h64 = Float64Array.from(h);
    const x = rms(h64, W.ln1);
    const q = rope(lin(x, L, D, W.q, D, W.qb), H), k = rope(lin(x, L, D, W.k, KV, W.kb), Hkv), v = lin(x, L, D, W.v, KV, W.vb);
    const a = new Float64Array(L * D);
    for (let i = 0; i < L; i++) {
      if (!mask[i]) continue; // flash semantics: masked query rows are 0
      for (let hh = 0; hh < H; hh++) {
        const kh = Math.floor(hh / (H / Hkv));
        const sc: number[] = [];
        for (let j = 0; j <= i; j++) {
          if (!mask[j]) { sc.push(-Infinity); continue; }
          let dot = 0;
          for (let d = 0; d < Dh; d++) dot += q[(i * H + hh) * Dh + d] * k[(j * Hkv + kh) * Dh + d];
          sc.push(dot / Math.sqrt(Dh));
        }
        const mx = Math.max(...sc), e = sc.map((z) => Math.exp(z - mx)), se = e.reduce((p, z) => p + z, 0);
        for (let d = 0; d < Dh; d++) {
          let acc = 0;
          for (let j = 0; j <= i; j++) acc += (e[j] / se) * v[(j * Hkv + kh) * Dh + d];
          a[(i * H + hh) * Dh + d] = acc;
        }
      }
    }
    const o = lin(a, L, D, W.o, D);
    const h1 = h64.map((z, i) => z + o[i]);
    const x2 = rms(h1, W.ln2);
    const gt = lin(x2, L, D, W.gate, I), ut = lin(x2, L, D, W.up, I);
    const act = gt.map((z, i) => (z / (1 + Math.exp(-z))) * ut[i]);
    const dn = lin(act, L, I, W.down, D);
    const ref = h1.map((z, i) => z + dn[i]);
    const res = compare('real-size decoder layer', got, ref, 1e-4, 1e-4);
    console.log(`${res.msg} (weights ${genMs} ms, GPU layer ${gpuMs} ms, host ref ${Date.now() - tr} ms)`);
    expect(res.pass).toBe(true);
  });
});

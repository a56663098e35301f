/**
 * Golden kind `prompt_layout`: Step1X's input_ids for each `spec.items[i]` (caption, image pad count
 * = prod(in.item{i}.image_grid_thw) / 4), with the tokenizer directory `spec.tokenizer_from` (relative
 * to the parent of the case directory, i.e. shared/golden). Emits `out.item{i}.input_ids` [L] (i64).
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fail, fmtShape, ExitCode } from '../../errors.js';
import { QwenTokenizer } from '../../models/qwen25vl/tokenizer.js';
import { buildStep1xInputIds } from '../../models/qwen25vl/prompt.js';
import type { FrontEndGoldenContext } from './qwen_processor.js';

export async function run(ctx: FrontEndGoldenContext): Promise<void> {
  const spec = ctx.spec ?? {};
  const items: any[] = spec.items;
  if (!Array.isArray(items) || items.length === 0) fail(`${ctx.caseDir}: spec.items must list the prompts`, ExitCode.USAGE);
  if (typeof spec.tokenizer_from !== 'string') fail(`${ctx.caseDir}: spec.tokenizer_from is missing`, ExitCode.USAGE);
  const tokDir = resolve(dirname(resolve(ctx.caseDir)), spec.tokenizer_from);
  if (!existsSync(tokDir))
    fail(`${ctx.caseDir}: tokenizer directory ${tokDir} (spec.tokenizer_from) not found`, ExitCode.WEIGHTS);
  const tok = QwenTokenizer.load(tokDir);
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    const gridName: string = it.grid_thw_key ?? `in.item${i}.image_grid_thw`;
    const grid = await ctx.inputInt(gridName);
    if (grid.length !== 3) fail(`${gridName} has ${grid.length} values, expected [1,3]`, ExitCode.USAGE);
    const tokens = grid[0] * grid[1] * grid[2];
    if (tokens % 4) fail(`${gridName} = ${fmtShape(Array.from(grid))}: t·h·w must be a multiple of 4`, ExitCode.USAGE);
    const p = buildStep1xInputIds(tok, it.caption, tokens / 4, {
      prefix: spec.prefix, maxLength: spec.max_length, dropPrefix: spec.drop_prefix_tokens,
    });
    const key: string = it.key ?? `out.item${i}.input_ids`;
    ctx.emit(key, p.inputIds, [p.inputIds.length], 'i64');
    ctx.log(`item ${i}: ${p.inputIds.length} ids (${tokens / 4} image tokens), kept span [${p.keepStart}, +${p.keepLen})`);
  }
}

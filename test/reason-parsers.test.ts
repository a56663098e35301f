/**
 * v12_parsers golden: every parser of the v1.2 thinker and prompt (validate_string, format_text, the
 * reflection / score validators, analyze_text, the JSON block parser, the consistency judge's score caps and
 * both quote splitters) on the case's raw-string tables, each row exact (returns and raises).
 * Plus the Python semantics they lean on where the table has no row.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenCase } from './util/golden-path.js';
import { checkParserTables } from '../src/golden/kinds/v12_parsers.js';
import { applyScoreCaps, validateReflection } from '../src/pipeline/reason/parsers.js';
import { pyFloat, pyInt, pyJsonLoads, pyRound4, pyStrip } from '../src/pipeline/reason/python.js';

const caseJson = JSON.parse(readFileSync(join(goldenCase('v12_parsers'), 'case.json'), 'utf8'));

test('v12_parsers: every row of every table exact', () => {
  const rows = checkParserTables(caseJson);
  const bad = rows.filter((r) => !r.pass);
  const fns = new Set(rows.map((r) => r.fn));
  process.stderr.write(`  v12_parsers: ${rows.length - bad.length}/${rows.length} rows exact over ${fns.size} functions\n`);
  if (bad.length) throw new Error(bad.map((r) => `${r.fn}[${r.row}]: got ${JSON.stringify(r.got)}, want ${JSON.stringify(r.want)}`).join('\n'));
  expect(fns.size).toBe(caseJson.spec.functions.length);
  expect(rows.length).toBeGreaterThanOrEqual(90);
});

test('a changed row is caught', () => {
  const c = JSON.parse(JSON.stringify(caseJson));
  c.tables.format_text.rows[3].returns[1] = 'Add a red hat.'; // the leading space is part of the contract
  expect(checkParserTables(c).filter((r) => !r.pass).map((r) => `${r.fn}[${r.row}]`)).toEqual(['format_text[3]']);
});

test('Python semantics: strip, json.loads, int(), float(), .4f rounding', () => {
  expect(pyStrip('\x1c a \x85')).toBe('a');
  expect(pyStrip('\ufeffa')).toBe('\ufeffa'); // BOM is not Python whitespace (JS trim removes it)
  expect(pyJsonLoads('{"a": NaN, "b": -Infinity}')).toEqual({ a: NaN, b: -Infinity });
  expect(() => pyJsonLoads('{"a": 1,}')).toThrow(/JSONDecodeError/);
  expect(() => pyJsonLoads('{"a": 1} x')).toThrow(/Extra data/);
  expect(pyInt(' 1_0 ')).toBe(10);
  expect(() => pyInt('1.5')).toThrow(/ValueError/);
  expect(pyInt(-1.7)).toBe(-1);
  expect(pyFloat(' 1e1 ')).toBe(10);
  expect(pyFloat('-inf')).toBe(-Infinity);
  expect(pyFloat('.5')).toBe(0.5);
  expect(() => pyFloat('.')).toThrow(/ValueError/);
  expect(() => pyFloat(null)).toThrow(/TypeError/);
  expect(pyRound4(0.03125)).toBe(0.0312); // exact tie → even, as Python's format
  expect(pyRound4(0.03135)).toBe(0.0314); // not exactly representable: nearest
  expect(pyRound4(8.88888)).toBe(8.8889);
});

test('score caps: NaN raw score, list object, bool counts', () => {
  expect(applyScoreCaps({ meets_instruction: 'yes', raw_score: 'nan' })!.score).toBe(10); // min(10, nan) keeps 10
  expect(applyScoreCaps([1, 2])).toBeNull();
  expect(applyScoreCaps({ meets_instruction: true, omissions: true, raw_score: 5 })).toMatchObject({ meets_instruction: 'true', omissions: 1, score: 5 });
  expect(applyScoreCaps({ raw_score: null })).toBeNull();
  expect(validateReflection('x <#Think> a <#Failed>  \n')).toEqual([true, '<#Think> a <#Failed>']);
});

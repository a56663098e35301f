/**
 * Issue 18's rule for the models and their layers (and the pipeline's stages): forward code frees nothing by hand. Intermediates end
 * with their tensor scope (runtime/scope.ts); weights with their module's dispose() (nn/module.ts).
 * Every `.dispose()` / `.release()` / `disposeAll(` call under src/models and src/nn must sit inside weight
 * lifecycle code: a function, method or property whose name says so (dispose, close, load…, release, the
 * block-streaming engine). Anything else — a forward, a helper it calls, a closure inside one — fails here
 * with file, line and the enclosing function named.
 *
 * The scan reads the TypeScript syntax tree, so a name in a comment or string does not count.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';
import { REPO_ROOT } from './util/golden-path.js';

/** Weight lifecycle: loading, streaming, freeing, caches held across forwards (nn/module.ts hold). */
const LIFECYCLE = /^(dispose|close|load\w*|preload|release|abandon|scan|hold|open\w*|stream\w*|pack\w*|merge\w*|upload\w*|fetch)$/;

/** Files whose conversion to scopes is in flight elsewhere (none: the DiT, connector, VAE and Qwen are converted). */
const PENDING = new Set<string>();

/**
 * src/pipeline frees no tensor by hand either (its stages read results inside g.scope / g.scopeAsync); what it
 * does free are objects that live for a stage or a run, where that stage or run ends: models in the model
 * host (the thinker's Qwen, held per stage, when a reasoning edit ends), a denoise loop's predictor (its prepared text). Listed call by call.
 */
const RUN_LIFETIMES = new Set([
  'src/pipeline/model-host.ts in use: this.release(kind)',
  'src/pipeline/model-host.ts in use: this.release(other)',
  'src/pipeline/model-host.ts in releaseAll: this.release(k)',
  'src/pipeline/sampling.ts in sampleLatent: predictor.dispose()',
  'src/pipeline/stages.ts in runDenoise: pred.dispose()',
  "src/pipeline/v12-run.ts in runV12Request: host.models.release('qwen')",
]);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

function nameOf(n: ts.Node): string | undefined {
  if ((ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n) || ts.isGetAccessor(n)) && n.name) return n.name.getText();
  if (ts.isConstructorDeclaration(n)) return 'constructor';
  if (ts.isArrowFunction(n) || ts.isFunctionExpression(n)) {
    const p = n.parent;
    if ((ts.isVariableDeclaration(p) || ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p)) && p.name) return p.name.getText();
    return '(closure)';
  }
  return undefined;
}

/** Hand frees outside lifecycle code: `file:line in fn: text`. */
export function handFrees(path: string, text: string): string[] {
  const sf = ts.createSourceFile(path, text, ts.ScriptTarget.ES2022, true);
  const out: string[] = [];
  const visit = (n: ts.Node, fn: string, allowed: boolean): void => {
    const name = nameOf(n);
    if (name !== undefined) {
      fn = name === '(closure)' ? fn : name;
      allowed ||= LIFECYCLE.test(name);
    }
    if (ts.isCallExpression(n) && !allowed) {
      const e = n.expression;
      const called = ts.isPropertyAccessExpression(e) ? e.name.text : ts.isIdentifier(e) ? e.text : '';
      if ((ts.isPropertyAccessExpression(e) && (called === 'dispose' || called === 'release')) || called === 'disposeAll')
        out.push(`${path}:${sf.getLineAndCharacterOfPosition(n.getStart()).line + 1} in ${fn}: ${n.getText().slice(0, 60)}`);
    }
    n.forEachChild((c) => visit(c, fn, allowed));
  };
  visit(sf, '(top level)', false);
  return out;
}

describe('no dispose()/release() in forward code (issue 18)', () => {
  const all = [...files(join(REPO_ROOT, 'src/models')), ...files(join(REPO_ROOT, 'src/nn'))].map((p) => relative(REPO_ROOT, p));
  const pending = (f: string) => PENDING.has(f);

  test('src/models and src/nn: every hand free is weight lifecycle code', () => {
    const found = all.filter((f) => !pending(f)).flatMap((f) => handFrees(f, readFileSync(join(REPO_ROOT, f), 'utf8')));
    expect(found).toEqual([]);
    expect(all.filter((f) => !pending(f)).length).toBeGreaterThan(10);
  });

  test('src/pipeline: no hand free but the listed stage and run lifetimes; each listed one still exists', () => {
    const found = files(join(REPO_ROOT, 'src/pipeline')).flatMap((p) => handFrees(relative(REPO_ROOT, p), readFileSync(p, 'utf8'))).map((h) => h.replace(/:\d+ in /, ' in '));
    expect(found.filter((h) => !RUN_LIFETIMES.has(h))).toEqual([]);
    expect([...RUN_LIFETIMES].filter((h) => !found.includes(h))).toEqual([]);
  });

  test('the pending list holds only files that still free by hand (drop a file from it once converted)', () => {
    const stale = all.filter(pending).filter((f) => handFrees(f, readFileSync(join(REPO_ROOT, f), 'utf8')).length === 0);
    expect(stale).toEqual([]);
  });

  test('the scan sees frees in forward code, closures and helpers, and not in lifecycle methods or comments', () => {
    const src = `
      class A {
        forward(x) { const h = f(x); h.dispose(); return g(() => { y.release(); }); }
        dispose() { this.w.dispose(); }
        static async load(g) { try { return 1; } catch (e) { t.dispose(); } }
      }
      function helper(a) { disposeAll(a); /* b.dispose() */ const s = 'c.dispose()'; }
      const p = { dispose: () => q.dispose(), run: () => r.dispose() };`;
    const hits = handFrees('x.ts', src).map((h) => h.replace(/: .*/, ''));
    expect(hits).toEqual(['x.ts:3 in forward', 'x.ts:3 in forward', 'x.ts:7 in helper', 'x.ts:8 in run']);
  });
});

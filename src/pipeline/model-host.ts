/**
 * Where the stages get their models. Two modes, chosen per edit from the VRAM plan (pipeline/plan.ts):
 *   keep     every model fits the budget together: each is loaded on first use and kept resident across
 *            stages and across the images of a batch (the VAE serves encode and decode; `batch` loads
 *            Qwen, the VAE and the DiT once);
 *   per-stage  each stage loads its model, runs, and frees it before the next (streaming under the budget).
 * `loads` counts model loads either way (tests, `--json` reports).
 */
export type ModelKind = 'qwen' | 'vae' | 'dit';

interface Held {
  key: string;
  model: unknown;
  dispose: () => Promise<void> | void;
}

export class ModelHost {
  readonly loads: Record<ModelKind, number> = { qwen: 0, vae: 0, dit: 0 };
  private held = new Map<ModelKind, Held>();
  /** Keep models resident between uses (set per edit from the plan). */
  keep = false;

  /**
   * Run `fn` with the model of `kind` (identified by `key`: files + options). In keep mode a model with
   * the same key is reused and not freed after `fn`; otherwise it is loaded for `fn` and freed after it.
   */
  async use<T, R>(kind: ModelKind, key: string, load: () => Promise<T>, dispose: (m: T) => Promise<void> | void, fn: (m: T) => Promise<R>): Promise<R> {
    const keep = this.keep;
    const h = this.held.get(kind);
    if (h && (!keep || h.key !== key)) await this.release(kind);
    if (keep) {
      let cur = this.held.get(kind);
      if (!cur) {
        const model = await load();
        this.loads[kind]++;
        cur = { key, model, dispose: () => dispose(model) };
        this.held.set(kind, cur);
      }
      return fn(cur.model as T);
    }
    const model = await load();
    this.loads[kind]++;
    try {
      return await fn(model);
    } finally {
      await dispose(model);
    }
  }

  async release(kind: ModelKind): Promise<void> {
    const h = this.held.get(kind);
    this.held.delete(kind);
    await h?.dispose();
  }

  async releaseAll(): Promise<void> {
    for (const k of [...this.held.keys()]) await this.release(k);
  }
}

/**
 * Where the stages get their models. Two modes, chosen per edit from the VRAM plan (pipeline/plan.ts):
 *   keep     every model fits the budget together: each is loaded on first use and kept resident across
 *            stages and across the images of a batch (the VAE serves encode and decode; `batch` loads
 *            Qwen, the VAE and the DiT once; a v1.2 reasoning edit's thinker and embed stage share Qwen);
 *   per-stage  one model on the GPU at a time: each stage loads its model, runs, and frees it before the
 *            next (streaming under the budget). A use with `hold` leaves its model loaded until a use of
 *            another kind (or `release`): the thinker's Qwen serves its consecutive calls and the next
 *            edit's embed stage, and goes before the VAE or the DiT loads.
 * A held model is reused only under the same key (files, weight options and the loader's budget).
 * `loads` counts model loads either way (tests, the dry run's `model_loads`).
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
   * Run `fn` with the model of `kind` (identified by `key`: files + options). A held model with the same key
   * is reused, one with another key freed first; in keep mode the model stays loaded after `fn`, per stage
   * only with `hold` (and every model of another kind is freed before it loads).
   */
  async use<T, R>(kind: ModelKind, key: string, load: () => Promise<T>, dispose: (m: T) => Promise<void> | void, fn: (m: T) => Promise<R>, o: { hold?: boolean } = {}): Promise<R> {
    const keep = this.keep;
    if (this.held.get(kind)?.key !== key) await this.release(kind);
    if (!keep) for (const other of [...this.held.keys()]) if (other !== kind) await this.release(other);
    let cur = this.held.get(kind);
    if (!cur) {
      const model = await load();
      this.loads[kind]++;
      cur = { key, model, dispose: () => dispose(model) };
      this.held.set(kind, cur);
    }
    if (keep || o.hold) return fn(cur.model as T);
    try {
      return await fn(cur.model as T);
    } finally {
      await this.release(kind);
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

/** Model loads of `models` since `before` (one request's: the dry run's `model_loads`). */
export function loadsSince(models: ModelHost, before: Record<ModelKind, number>): Record<ModelKind, number> {
  return { qwen: models.loads.qwen - before.qwen, vae: models.loads.vae - before.vae, dit: models.loads.dit - before.dit };
}

/**
 * Golden kinds: each `case.json` names a `kind`; the runner looks up the function that runs it here.
 * A kind lives in `src/golden/kinds/<kind>.ts`, exports `run(ctx)`, and is registered (lazily, so a
 * run only loads the models it needs) by `src/golden/kinds/index.ts`.
 *
 * A kind reads `spec`, the weight files in `caseDir` and the `in.*` tensors, and `emit`s every tensor it
 * computes under the golden's names; the runner compares, reports and dumps.
 */
import type { Gpu } from '../runtime/gpu.js';
import type { SafetensorsFile } from '../io/safetensors.js';

export type EmitKind = 'f32' | 'i64' | 'u8';

export interface GoldenContext {
  caseDir: string;
  /** case.json `spec`. */
  spec: any;
  caseJson: any;
  io: SafetensorsFile;
  /** An io.safetensors tensor as f32 (ints converted). */
  input(name: string): Promise<Float32Array>;
  /** An integer io.safetensors tensor (I64 must fit int32). */
  inputInt(name: string): Promise<Int32Array>;
  /** Whether io.safetensors holds this tensor. */
  has(name: string): boolean;
  gpu: Gpu;
  /**
   * A computed tensor under its golden name. `kind` defaults from the array type: Float32Array → f32,
   * Int32Array → i64, Uint8Array → u8. The data is copied.
   */
  emit(name: string, data: Float32Array | Int32Array | Uint8Array, shape: number[], kind?: EmitKind): void;
  /** A line on stderr. */
  log(msg: string): void;
}

export type KindRun = (ctx: GoldenContext) => Promise<void>;

const kinds = new Map<string, () => Promise<KindRun>>();

/** Register a kind's run function (replaces an earlier registration of the same kind). */
export function registerKind(kind: string, run: KindRun): void {
  kinds.set(kind, async () => run);
}

/** Register a kind whose module is imported only when a case of that kind runs. */
export function registerLazyKind(kind: string, load: () => Promise<{ run: KindRun }>): void {
  kinds.set(kind, async () => (await load()).run);
}

export function knownKinds(): string[] {
  return [...kinds.keys()].sort();
}

/** The run function of `kind`, or undefined when no such kind is registered. */
export async function resolveKind(kind: string): Promise<KindRun | undefined> {
  const f = kinds.get(kind);
  return f ? f() : undefined;
}

/**
 * One error type for everything a user can cause or fix. `code` is the process exit code the CLI uses;
 * the table is documented in the README ("Exit codes").
 */
export const ExitCode = {
  OK: 0,
  MISMATCH: 1, // golden comparison failed
  USAGE: 2, // bad arguments, unknown golden kind, bad input file (malformed safetensors, image, ...)
  INPUT: 3, // missing or unreadable input image / unsupported format
  WEIGHTS: 4, // missing weight files, missing/unexpected keys, wrong shapes
  NO_GPU: 5, // no WebGPU adapter
  GPU_OOM: 6, // out of GPU memory
  OUTPUT: 7, // output not writable
  GPU: 8, // other GPU errors (validation, device lost)
  INTERRUPTED: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export class Step1xError extends Error {
  constructor(
    message: string,
    readonly code: ExitCodeValue = ExitCode.USAGE,
  ) {
    super(message);
    this.name = 'Step1xError';
  }
}

/**
 * The device could not back an allocation (GPU_OOM): the pipeline re-plans under a smaller budget
 * (pipeline/stages.ts withOomFallback). A plan refusing a budget is a plain Step1xError(GPU_OOM).
 */
export class GpuOutOfMemory extends Step1xError {
  constructor(message: string) {
    super(message, ExitCode.GPU_OOM);
  }
}

export function fail(message: string, code: ExitCodeValue = ExitCode.USAGE): never {
  throw new Step1xError(message, code);
}

/** `[2, 3, 4]` → `[2,3,4]`, for error messages that name both shapes. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

/**
 * Which official behaviour an edit follows. The official Step1X-Edit code changed between upstream
 * 570eba6 (2025-05-22, what our first goldens pin) and 95feaea (2025-12-01, what users run today) in
 * three respects that are not told by the weights:
 *   - CFG truncation: `generate_image` passes `timesteps_truncate=0.93` (diff-norm CFG while t > 0.93);
 *     May 2025 passed 1.0, which never triggers.
 *   - the input resize of `input_process_image`: PIL LANCZOS (was the default, BICUBIC). The resize back
 *     to the photo size stays BICUBIC in both.
 *   - Qwen2.5-VL text attention: `attn_implementation="sdpa"` — a masked `!` token (id 0) is no key for
 *     anyone but its own query row attends normally (eager semantics); May 2025 used flash_attention_2,
 *     whose unpadding zeroes that row's attention output.
 * The checkpoint version (v1.0 / v1.1) is separate: the weights tell it (dit-config.ts).
 *
 * `current` is the default; `2025-05` (`--compat 2025-05`) restores all three, so results made with
 * the May 2025 code can be reproduced.
 */
import { ExitCode, Step1xError } from '../errors.js';
import type { ResampleFilter } from '../io/resize.js';

export type TextAttention = 'sdpa' | 'flash';
export type CompatMode = 'current' | '2025-05';
export const COMPAT_MODES: readonly CompatMode[] = ['current', '2025-05'];

export interface OfficialBehaviour {
  compat: CompatMode;
  /** `timesteps_truncate`: steps with t_curr above it use the diff-norm CFG; 1 disables it. */
  cfgTruncate: number;
  /** Filter of `input_process_image` (the resize to the working size). */
  inputResize: ResampleFilter;
  /** Semantics of masked text tokens in the Qwen2.5-VL text model. */
  textAttention: TextAttention;
}

export const CURRENT: Readonly<OfficialBehaviour> = Object.freeze({ compat: 'current', cfgTruncate: 0.93, inputResize: 'lanczos', textAttention: 'sdpa' });
export const COMPAT_2025_05: Readonly<OfficialBehaviour> = Object.freeze({ compat: '2025-05', cfgTruncate: 1.0, inputResize: 'bicubic', textAttention: 'flash' });

export function parseCompat(v: unknown): CompatMode {
  if (v === 'current' || v === '2025-05') return v;
  throw new Step1xError(`--compat must be one of ${COMPAT_MODES.join(', ')}, got ${JSON.stringify(v)}`, ExitCode.USAGE);
}

/** The behaviour of a compat mode, with an explicit `timesteps_truncate` (`--cfg-truncate`) on top. */
export function behaviour(compat: CompatMode = 'current', cfgTruncate?: number): OfficialBehaviour {
  const base = compat === '2025-05' ? COMPAT_2025_05 : CURRENT;
  return cfgTruncate === undefined ? { ...base } : { ...base, cfgTruncate };
}

/** `config.input_resize` of a golden case ("PIL LANCZOS", "PIL BICUBIC", ...) → our filter name. */
export function filterFromPil(desc: string): ResampleFilter {
  const m = /(nearest|box|bilinear|hamming|bicubic|lanczos)/i.exec(desc);
  if (!m) throw new Step1xError(`unknown resize filter "${desc}"`, ExitCode.USAGE);
  return m[1].toLowerCase() as ResampleFilter;
}

/**
 * The behaviour a golden case was made with. Cases of the first generator (no `generator_version` 2 and
 * no `spec.version`) follow the May 2025 code; later ones state `timesteps_truncate` (top level or in
 * `spec`) and `config.input_resize` where they resize, and use SDPA text attention.
 */
export function behaviourOfCase(caseJson: any): OfficialBehaviour & { version?: 'v1.0' | 'v1.1' } {
  const spec = caseJson?.spec ?? {};
  const v2 = caseJson?.generator_version === 2 || spec.version !== undefined;
  if (!v2) return { ...COMPAT_2025_05 };
  const trunc = caseJson.timesteps_truncate ?? spec.timesteps_truncate ?? caseJson.config?.timesteps_truncate;
  const resize = caseJson.config?.input_resize;
  return {
    ...CURRENT,
    cfgTruncate: typeof trunc === 'number' ? trunc : CURRENT.cfgTruncate,
    inputResize: typeof resize === 'string' ? filterFromPil(resize) : CURRENT.inputResize,
    version: spec.version ?? caseJson.version,
  };
}

/** The official T2I negative prompt (inference.py main(), task_type t2i); edit uses "". */
export const T2I_NEGATIVE_PROMPT =
  'worst quality, wrong limbs, unreasonable limbs, normal quality, low quality, low res, blurry, text, watermark, logo, banner, extra digits, cropped, jpeg artifacts, signature, username, error, sketch ,duplicate, ugly, monochrome, horror, geometry, mutation, disgusting';

/** Side of the black square image the MLLM sees in text-to-image (`Image.new('RGB', (1024, 1024))`). */
export const T2I_MLLM_IMAGE_SIDE = 1024;

export { parseVersion, versionOfKeys, DIT_VERSIONS, type DitVersion } from '../models/dit-config.js';

/**
 * Where the model lives. Resolution order:
 *   1. `--model DIR` (the official `inference.py --model_path` layout)
 *   2. `$STEP1X_MODEL`
 *   3. the Hugging Face cache (`$HF_HOME/hub` or `~/.cache/huggingface/hub`): the best model present,
 *      v1.2 (`stepfun-ai/Step1X-Edit-v1p2`, diffusers layout) > v1.1 (`stepfun-ai/Step1X-Edit` +
 *      `Qwen/Qwen2.5-VL-7B-Instruct`, else `stepfun-ai/Step1X-Edit-v1p1-diffusers`) > v1.0; `--version` picks
 * A directory in the official layout:
 *   step1x-edit-v1p1-official.safetensors (v1.1) | step1x-edit-i1258.safetensors (v1.0)   DiT + connector (bf16);
 *                                            with both, v1.1 unless --version v1.0
 *   vae.safetensors                                                          FLUX AutoEncoder (f32)
 *   Qwen2.5-VL-7B-Instruct/                                                  sharded Qwen2.5-VL + tokenizer
 *   step1x.json (optional)                                                   hyper-parameters of tiny models
 * Missing files → one error naming each missing file, its size and how to get it. No GPU here.
 */
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { readCheckedText } from './safe-read.js';
import { checkHparams } from './hparams-check.js';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { isDiffusersDir, readDiffusersDir, type DiffusersModelDir } from './diffusers-layout.js';

/** The DiT file of each checkpoint version (the official `inference.py --version` choice). */
export const DIT_FILE_OF = { 'v1.0': 'step1x-edit-i1258.safetensors', 'v1.1': 'step1x-edit-v1p1-official.safetensors' } as const;
export type CheckpointVersion = keyof typeof DIT_FILE_OF;
/** In order of preference when a directory holds both and no version is asked for: v1.1, the official default. */
export const DIT_FILES = [DIT_FILE_OF['v1.1'], DIT_FILE_OF['v1.0']];

/** Every version a model directory can hold: the official-layout files above, and v1.2 (diffusers layout only). */
export type ModelVersion = CheckpointVersion | 'v1.2';

export interface ResolveOptions {
  /** `--version`: take that version's DiT file (v1.1 is preferred otherwise), or check a diffusers directory holds it. */
  version?: ModelVersion;
}

/** The Hugging Face repos of the diffusers layout, by version. */
export const HF_REPO_DIFFUSERS: Record<'v1.1' | 'v1.2', string> = { 'v1.2': 'stepfun-ai/Step1X-Edit-v1p2', 'v1.1': 'stepfun-ai/Step1X-Edit-v1p1-diffusers' };

/** The DiT file in `dir` for `version`, or the preferred one present; undefined when none is. */
function findDit(dir: string, version?: CheckpointVersion): string | undefined {
  const names = version ? [DIT_FILE_OF[version]] : DIT_FILES;
  return names.map((f) => join(dir, f)).find((p) => existsSync(p));
}

/** `--version X` asked for a file that is not there while the other version's is: say so plainly. */
function versionMismatch(dir: string, version: CheckpointVersion): Step1xError | undefined {
  const other: CheckpointVersion = version === 'v1.0' ? 'v1.1' : 'v1.0';
  if (!existsSync(join(dir, DIT_FILE_OF[other]))) return undefined;
  return new Step1xError(
    `--version ${version}: ${dir} holds ${DIT_FILE_OF[other]} (${other}) but not ${DIT_FILE_OF[version]}; drop --version or pass --version ${other}`,
    ExitCode.WEIGHTS,
  );
}
export const VAE_FILE = 'vae.safetensors';
export const QWEN_DIR = 'Qwen2.5-VL-7B-Instruct';
export const QWEN_REQUIRED = ['config.json', 'tokenizer.json', 'model.safetensors.index.json'];
export const HF_REPO_STEP1X = 'stepfun-ai/Step1X-Edit';
export const HF_REPO_QWEN = 'Qwen/Qwen2.5-VL-7B-Instruct';

export interface ModelFiles {
  /** Where the files were found: the directory, `$STEP1X_MODEL`, or the HF cache. */
  source: string;
  dit: string;
  vae: string;
  /** Qwen2.5-VL config.json + weights (official: Qwen2.5-VL-7B-Instruct/; diffusers: text_encoder/) */
  qwenDir: string;
  /** tokenizer.json, chat template, preprocessor_config.json; qwenDir when absent (official layout) */
  tokenizerDir?: string;
  /** 'official' when absent; a diffusers directory also carries what readDiffusersDir found */
  layout?: 'official' | 'diffusers';
  diffusers?: DiffusersModelDir;
  /** step1x.json when present (tiny models); absent for the real model. */
  hparamsPath?: string;
  hparams?: Step1xHparams;
}

/** `step1x.json` (format `step1x-tiny-hparams/1`): official constructor argument names. */
export interface Step1xHparams {
  format?: string;
  dit?: Record<string, unknown>;
  connector?: Record<string, unknown>;
  ae?: Record<string, unknown>;
  embedder?: { max_length?: number; drop_prefix_tokens?: number; min_pixels?: number; max_pixels?: number };
}

const SIZES: Record<string, string> = {
  'step1x-edit-i1258.safetensors': '24.9 GB',
  'step1x-edit-v1p1-official.safetensors': '24.9 GB',
  [VAE_FILE]: '335 MB',
  [QWEN_DIR]: '16.6 GB (5 shards + tokenizer/config files)',
};

/**
 * Why an entry that `existsSync` calls absent is unusable, when it is a symlink: dangling (its target is
 * gone, e.g. a deleted blob in the HF cache) or a loop. Undefined for a plain absence.
 */
export function brokenLink(p: string): string | undefined {
  let target: string;
  try {
    if (!lstatSync(p).isSymbolicLink()) return undefined;
    target = readlinkSync(p);
  } catch {
    return undefined;
  }
  try {
    statSync(p);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ELOOP' ? `a symlink loop (→ ${target})` : `a broken symlink (→ ${target}, which does not exist)`;
  }
}

/** A missing entry for the message: its name, and what is wrong when it is there but broken. */
function missingEntry(label: string, path: string): string {
  const b = brokenLink(path) ?? brokenLink(`${path}.gz`);
  return b ? `${label}: ${b}` : label;
}

/** A required file, or its gzip-compressed form (the tokenizer of the in-repo test model). */
function hasFile(dir: string, f: string): boolean {
  return existsSync(join(dir, f)) || existsSync(join(dir, `${f}.gz`));
}

/** The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
export function hfHubDir(): string {
  return hfHub();
}

function hfHub(): string {
  // an empty variable is unset (as huggingface_hub treats it), never the current directory
  const home = process.env.HF_HOME || join(homedir(), '.cache', 'huggingface');
  return process.env.HF_HUB_CACHE || join(home, 'hub');
}

/** Snapshot directory of a repo in the HF cache (refs/main first, else the newest snapshot). */
export function hfSnapshot(repo: string, hub = hfHub()): string | undefined {
  const base = join(hub, `models--${repo.replace('/', '--')}`);
  const snaps = join(base, 'snapshots');
  if (!existsSync(snaps)) return undefined;
  try {
    const ref = readFileSync(join(base, 'refs', 'main'), 'utf8').trim();
    // refs/main is data: only a plain commit name may become a path (never `../../x`)
    if (/^[0-9A-Za-z_-][0-9A-Za-z._-]{0,254}$/.test(ref) && existsSync(join(snaps, ref))) return join(snaps, ref);
  } catch {
    /* no refs/main */
  }
  const all = readdirSync(snaps)
    .map((d) => join(snaps, d))
    .filter((d) => {
      try {
        return statSync(d).isDirectory();
      } catch {
        return false; // a broken snapshot link
      }
    })
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  return all[0];
}

function readHparams(path: string): Step1xHparams {
  let j: unknown;
  try {
    j = JSON.parse(readCheckedText(path, 1 << 20, 'step1x.json', ExitCode.WEIGHTS));
  } catch (e) {
    if (e instanceof Step1xError) throw e;
    throw new Step1xError(`${path}: not valid JSON (${(e as Error).message})`, ExitCode.WEIGHTS);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Step1xError(`${path}: must hold a JSON object`, ExitCode.WEIGHTS);
  checkHparams(j as Record<string, unknown>, path);
  return j as Step1xHparams;
}

/** The size of a missing entry ("stepfun-ai/Step1X-Edit: vae.safetensors", "Qwen2.5-VL-7B-Instruct/config.json"). */
function sizeOf(m: string): string | undefined {
  const name = m.split(/[/:]\s*/).pop()!.replace(/ \(.*$/, '');
  return SIZES[name] ?? (m.startsWith(HF_REPO_QWEN) && !m.includes(':') ? SIZES[QWEN_DIR] : undefined);
}

function missingMessage(where: string, missing: string[], version: CheckpointVersion = 'v1.1', hfMode = false): string {
  const lines = missing.map((m) => `  - ${m}${sizeOf(m) && !m.includes('GB') ? ` (${sizeOf(m)})` : ''}`);
  // the files listed are the official layout's; plain `step1x download` fetches v1.2 (diffusers layout)
  const v = ` --version ${version}`;
  return (
    `model files missing in ${where}:\n${lines.join('\n')}\n` +
    `Get them (about 42 GB) with step1x itself:\n` +
    `  step1x download${v}                   into the Hugging Face cache, found with no flags\n` +
    `  step1x download${v} --local-dir DIR   into DIR, then pass --model DIR (or set STEP1X_MODEL=DIR)\n` +
    `  step1x download [--local-dir DIR]               the default instead: v1.2 (${HF_REPO_DIFFUSERS['v1.2']}, diffusers layout, about 42 GB)\n` +
    `or with the Hugging Face CLI: huggingface-cli download ${HF_REPO_STEP1X} ${DIT_FILE_OF[version]} vae.safetensors` +
    `${hfMode ? '' : ' --local-dir DIR'}; huggingface-cli download ${HF_REPO_QWEN}${hfMode ? '' : ` --local-dir DIR/${QWEN_DIR}`}.`
  );
}

/** Files of a model directory in the official layout, or an error listing what is missing. */
export function modelFilesInDir(dir: string, source = dir, opts: ResolveOptions = {}): ModelFiles {
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory())
    throw new Step1xError(`model directory not found: ${dir}`, ExitCode.WEIGHTS);
  if (isDiffusersDir(root)) return diffusersModelFiles(root, source, opts);
  if (opts.version === 'v1.2')
    throw new Step1xError(
      `--version v1.2: ${dir} is in the official layout (no model_index.json); v1.2 ships only in the diffusers layout (${HF_REPO_DIFFUSERS['v1.2']}): step1x download --version v1.2`,
      ExitCode.WEIGHTS,
    );
  const officialOpts = { version: opts.version as CheckpointVersion | undefined };
  const missing: string[] = [];
  const dit = findDit(root, officialOpts.version);
  if (!dit && officialOpts.version) {
    const e = versionMismatch(root, officialOpts.version);
    if (e) throw e;
  }
  if (!dit) missing.push(missingEntry(DIT_FILE_OF[officialOpts.version ?? 'v1.1'], join(root, DIT_FILE_OF[officialOpts.version ?? 'v1.1'])));
  const vae = join(root, VAE_FILE);
  if (!existsSync(vae)) missing.push(missingEntry(VAE_FILE, vae));
  const qwenDir = join(root, QWEN_DIR);
  if (!existsSync(qwenDir)) missing.push(missingEntry(QWEN_DIR, qwenDir));
  else for (const f of QWEN_REQUIRED) if (!hasFile(qwenDir, f)) missing.push(missingEntry(`${QWEN_DIR}/${f}`, join(qwenDir, f)));
  if (missing.length) throw new Step1xError(missingMessage(root, missing, officialOpts.version), ExitCode.WEIGHTS);
  const hp = join(root, 'step1x.json');
  const files: ModelFiles = { source, dit: dit!, vae, qwenDir };
  if (existsSync(hp)) {
    files.hparamsPath = hp;
    files.hparams = readHparams(hp);
  }
  return files;
}

/** The tokenizer directory of a model (processor/ in the diffusers layout, the Qwen directory otherwise). */
export function tokenizerDirOf(files: Pick<ModelFiles, 'qwenDir' | 'tokenizerDir'>): string {
  return files.tokenizerDir ?? files.qwenDir;
}

/** A diffusers-layout directory (model_index.json) as ModelFiles: dit/vae are the component directories. */
export function diffusersModelFiles(root: string, source = root, opts: ResolveOptions = {}): ModelFiles {
  const d = readDiffusersDir(root);
  if (opts.version && opts.version !== d.version)
    throw new Step1xError(
      `--version ${opts.version}: ${root} holds a diffusers-layout ${d.version} model (${d.pipelineClass} in model_index.json); drop --version or pass --version ${d.version}`,
      ExitCode.WEIGHTS,
    );
  return { source, dit: d.transformerDir, vae: d.vaeDir, qwenDir: d.textEncoderDir, tokenizerDir: d.tokenizerDir, layout: 'diffusers', diffusers: d };
}

/** Resolve `--model`, `$STEP1X_MODEL`, then the Hugging Face cache. */
export function resolveModelFiles(modelOpt?: string, opts: ResolveOptions = {}): ModelFiles {
  if (modelOpt) return modelFilesInDir(modelOpt, modelOpt, opts);
  if (process.env.STEP1X_MODEL) return modelFilesInDir(process.env.STEP1X_MODEL, '$STEP1X_MODEL', opts);
  const hub = hfHub();
  // without --version the best model present: v1.2 (diffusers layout only) > v1.1 (the official file, else
  // its diffusers repo) > v1.0; --version picks one
  const diffusersSnap = (v: 'v1.1' | 'v1.2') => {
    const s = hfSnapshot(HF_REPO_DIFFUSERS[v], hub);
    return s && isDiffusersDir(s) ? s : undefined;
  };
  const found = (dir: string, v: 'v1.1' | 'v1.2') => diffusersModelFiles(dir, `Hugging Face cache ${hub}`, { ...opts, version: v });
  const s12 = opts.version === undefined || opts.version === 'v1.2' ? diffusersSnap('v1.2') : undefined;
  if (s12) return found(s12, 'v1.2');
  if (opts.version === undefined || opts.version === 'v1.1') {
    const off = hfSnapshot(HF_REPO_STEP1X, hub), s11 = diffusersSnap('v1.1');
    if (s11 && !(off && findDit(off, 'v1.1'))) return found(s11, 'v1.1');
  }
  if (opts.version === 'v1.2')
    throw new Step1xError(
      `--version v1.2: no --model given, $STEP1X_MODEL unset, and the Hugging Face cache (${hub}) has no ${HF_REPO_DIFFUSERS['v1.2']} snapshot. ` +
        `Get it with: step1x download --version v1.2`,
      ExitCode.WEIGHTS,
    );
  const ov = opts.version as CheckpointVersion | undefined;
  const s = hfSnapshot(HF_REPO_STEP1X, hub);
  const q = hfSnapshot(HF_REPO_QWEN, hub);
  const missing: string[] = [];
  let dit: string | undefined;
  if (s) dit = findDit(s, ov);
  if (s && !dit && ov) {
    const e = versionMismatch(s, ov);
    if (e) throw e;
  }
  const ditName = DIT_FILE_OF[ov ?? 'v1.1'];
  if (!dit) missing.push(s ? missingEntry(`${HF_REPO_STEP1X}: ${ditName}`, join(s, ditName)) : `${HF_REPO_STEP1X}: ${ditName}`);
  const vae = s ? join(s, VAE_FILE) : undefined;
  if (!vae || !existsSync(vae)) missing.push(vae ? missingEntry(`${HF_REPO_STEP1X}: ${VAE_FILE}`, vae) : `${HF_REPO_STEP1X}: ${VAE_FILE}`);
  // The Qwen weights may also sit inside the Step1X snapshot in the official layout.
  const qwenDir = q ?? (s && existsSync(join(s, QWEN_DIR)) ? join(s, QWEN_DIR) : undefined);
  if (!qwenDir) missing.push(`${HF_REPO_QWEN} (${SIZES[QWEN_DIR]})`);
  else for (const f of QWEN_REQUIRED) if (!hasFile(qwenDir, f)) missing.push(missingEntry(`${HF_REPO_QWEN}: ${f}`, join(qwenDir, f)));
  if (missing.length)
    throw new Step1xError(
      `no --model given, $STEP1X_MODEL unset, and the Hugging Face cache (${hub}) lacks files. ` + missingMessage(hub, missing, ov, true),
      ExitCode.WEIGHTS,
    );
  const files: ModelFiles = { source: `Hugging Face cache ${hub}`, dit: dit!, vae: vae!, qwenDir: qwenDir! };
  const hp = join(s!, 'step1x.json'); // tiny test models carry their hyper-parameters in the repo
  if (existsSync(hp)) {
    files.hparamsPath = hp;
    files.hparams = readHparams(hp);
  }
  return files;
}

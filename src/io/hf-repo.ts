/**
 * What `step1x download` fetches from a Hugging Face endpoint (`$HF_ENDPOINT`, default https://huggingface.co):
 * the repo listing (`/api/models/<repo>/revision/main?blobs=true`: sizes, SHA-256, blob ids, the commit)
 * and the file list, which lives in one place, `modelDownloadSpec` (the DiT of the asked version, the VAE,
 * `step1x.json` when the repo has one, and the Qwen2.5-VL repo's top-level weights and configs), laid out
 * for a directory in the official layout (`modelDownloadPlan`) or the Hugging Face cache (`hfCachePlan`).
 * The transfers themselves (resume, verification, the cache's blobs and links) are io/download.ts.
 */
import { join } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { isPlainRelativePath } from './safe-read.js';
import { DIT_FILE_OF, HF_REPO_DIFFUSERS, HF_REPO_QWEN, HF_REPO_STEP1X, QWEN_DIR, VAE_FILE, hfHubDir, type ModelVersion } from './model-files.js';

export interface DownloadItem {
  repo: string;
  file: string; // path inside the repo
  dest: string; // local path (local-dir mode; in the HF cache, the snapshot path)
  /** From the repo listing, when it says. */
  size?: number;
  sha256?: string;
  /** HF cache mode: the blob this file is stored as (its etag: LFS sha256 or git blob id). */
  blob?: string;
}

export function endpoint(): string {
  return (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

function authHeaders(): Record<string, string> {
  const tok = process.env.HF_TOKEN;
  return tok ? { authorization: `Bearer ${tok}` } : {};
}

export const dlErr = (m: string) => new Step1xError(m, ExitCode.WEIGHTS);

/** "fetch failed" says nothing: name the cause (ECONNREFUSED, ENOTFOUND, a TLS error, ...). */
export function netCause(e: unknown): string {
  const c = (e as { cause?: { code?: string; message?: string } }).cause;
  return c?.code ?? c?.message ?? (e as Error).message;
}

export async function get(url: string, headers: Record<string, string> = {}): Promise<Response> {
  try {
    return await fetch(url, { headers: { ...authHeaders(), ...headers }, redirect: 'follow' });
  } catch (e) {
    throw dlErr(`cannot reach ${url}: ${netCause(e)}; check the network or HF_ENDPOINT, then run the command again to resume`);
  }
}

export interface RepoFile {
  path: string;
  size?: number;
  sha256?: string;
  blobId?: string;
}

export interface RepoListing {
  repo: string;
  /** The commit `main` points to (snapshots/<revision>), when the endpoint says. */
  revision?: string;
  files: RepoFile[];
}

/** Files of a repo at `main` with sizes and checksums (`/api/models/<repo>/revision/main?blobs=true`). */
export async function listRepo(repo: string, base = endpoint()): Promise<RepoListing> {
  const url = `${base}/api/models/${repo}/revision/main?blobs=true`;
  const res = await get(url, { accept: 'application/json' });
  if (!res.ok) throw dlErr(`listing ${repo} failed: HTTP ${res.status} from ${url}${res.status === 401 || res.status === 403 ? ' (set HF_TOKEN?)' : ''}`);
  const body = await res.text();
  let j: { sha?: unknown; siblings?: { rfilename?: unknown; size?: unknown; blobId?: unknown; lfs?: { sha256?: unknown; size?: unknown } }[] };
  try {
    j = JSON.parse(body);
  } catch {
    const what = /^\s*</.test(body) ? 'an HTML page' : 'something that is not JSON';
    throw dlErr(`listing ${repo}: ${url} answered with ${what}, not the repo listing; is HF_ENDPOINT (${base}) a Hugging Face endpoint?`);
  }
  const str = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
  const int = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined);
  // The server is untrusted input: a name becomes a path in the cache, so it must be a plain relative
  // path (file names) or a plain hex id (blobs), never `../`, absolute or with control characters.
  const bad = (what: string, v: string) => dlErr(`listing ${repo} from ${base}: ${what} ${JSON.stringify(v)} is not a plain name inside the repo; refusing the listing`);
  const files = (Array.isArray(j.siblings) ? j.siblings : [])
    .filter((s) => typeof s?.rfilename === 'string')
    .map((s) => {
      const path = s.rfilename as string;
      if (!isPlainRelativePath(path)) throw bad('file name', path);
      const sha256 = str(s.lfs?.sha256)?.toLowerCase();
      if (sha256 !== undefined && !/^[0-9a-f]{64}$/.test(sha256)) throw bad(`sha256 of ${path}`, sha256);
      const blobId = str(s.blobId);
      if (blobId !== undefined && !/^[0-9a-f]{40}([0-9a-f]{24})?$/i.test(blobId)) throw bad(`blob id of ${path}`, blobId);
      return { path, size: int(s.lfs?.size) ?? int(s.size), sha256, blobId: blobId?.toLowerCase() };
    });
  const rev = str(j.sha);
  return { repo, revision: rev && /^[0-9a-f]{40}$/i.test(rev) ? rev.toLowerCase() : undefined, files };
}

/** Kept for callers of the earlier API: the file names only. */
export async function listRepoFiles(repo: string, base = endpoint()): Promise<string[]> {
  return (await listRepo(repo, base)).files.map((f) => f.path);
}

/** One repo's part of the model: which files, and where they go in the official layout. */
export interface RepoSpec {
  listing: RepoListing;
  files: { file: RepoFile; layoutPath: string }[];
}

const QWEN_FILE_RE = /\.(safetensors|json|txt|jinja)$|\.json\.gz$/;

/**
 * THE file list of a model (one place to extend): the DiT of `version`, the VAE and `step1x.json` (tiny
 * test models) from the Step1X repo, and the Qwen repo's top-level weights, configs and tokenizer files.
 */
export async function modelDownloadSpec(base = endpoint(), version: ModelVersion): Promise<RepoSpec[]> {
  if (version === 'v1.2') return [await diffusersDownloadSpec(HF_REPO_DIFFUSERS['v1.2'], base)];
  const dit = DIT_FILE_OF[version];
  let step: RepoListing;
  try {
    step = await listRepo(HF_REPO_STEP1X, base);
  } catch (e) {
    // an endpoint that only serves files (a mirror without the API) still gets the fixed names
    if (!(e instanceof Step1xError) || !/HTTP 404/.test(e.message)) throw e;
    step = { repo: HF_REPO_STEP1X, files: [{ path: dit }, { path: VAE_FILE }] };
  }
  const byName = new Map(step.files.map((f) => [f.path, f]));
  const stepFiles = [dit, VAE_FILE, 'step1x.json']
    .filter((n) => n !== 'step1x.json' || byName.has(n))
    .map((n) => ({ file: byName.get(n) ?? { path: n }, layoutPath: n }));
  const qwen = await listRepo(HF_REPO_QWEN, base);
  const qwenFiles = qwen.files.filter((f) => QWEN_FILE_RE.test(f.path) && !f.path.includes('/')).map((f) => ({ file: f, layoutPath: join(QWEN_DIR, f.path) }));
  return [
    { listing: step, files: stepFiles },
    { listing: qwen, files: qwenFiles },
  ];
}

/** The component folders a diffusers-layout model needs, and the file kinds inside them (weights, configs, tokenizer). */
const DIFFUSERS_FILE_RE = /^(model_index\.json|(transformer|text_encoder|vae|scheduler|processor|tokenizer)\/[^/]+\.(safetensors|json|txt|jinja))$/;

/** A diffusers-layout repo (v1.2: stepfun-ai/Step1X-Edit-v1p2): model_index.json and its component folders, as laid out in the repo. */
export async function diffusersDownloadSpec(repo: string, base = endpoint()): Promise<RepoSpec> {
  const listing = await listRepo(repo, base);
  const files = listing.files.filter((f) => DIFFUSERS_FILE_RE.test(f.path)).map((f) => ({ file: f, layoutPath: f.path }));
  if (!files.some((f) => f.file.path === 'model_index.json')) throw dlErr(`${repo} at ${base} lists no model_index.json: not a diffusers-layout model`);
  return { listing, files };
}

/** What a model directory in the official layout needs (`--local-dir DIR`). */
export async function modelDownloadPlan(dir: string, base = endpoint(), version: ModelVersion): Promise<DownloadItem[]> {
  const spec = await modelDownloadSpec(base, version);
  return spec.flatMap((r) =>
    r.files.map(({ file, layoutPath }) => ({ repo: r.listing.repo, file: file.path, dest: join(dir, layoutPath), size: file.size, sha256: file.sha256 })),
  );
}

/** The Hugging Face cache folder of a repo. */
export function hfRepoDir(repo: string, hub = hfHubDir()): string {
  return join(hub, `models--${repo.replace('/', '--')}`);
}

/**
 * Plan for the Hugging Face cache: per repo, the snapshot of `main`'s commit; each file as a blob named by
 * its etag (LFS sha256, else the git blob id) and a relative symlink in the snapshot.
 */
export async function hfCachePlan(hub = hfHubDir(), base = endpoint(), version: ModelVersion): Promise<{ repo: string; revision: string; items: DownloadItem[] }[]> {
  const spec = await modelDownloadSpec(base, version);
  return spec.map((r) => {
    const { repo, revision } = r.listing;
    if (!revision) throw dlErr(`${base} does not say which commit ${repo} main is at, so the Hugging Face cache layout cannot be written; use --local-dir DIR`);
    const root = hfRepoDir(repo, hub);
    const items = r.files.map(({ file }) => ({
      repo,
      file: file.path,
      dest: join(root, 'snapshots', revision, file.path),
      size: file.size,
      sha256: file.sha256,
      blob: file.sha256 ?? file.blobId,
    }));
    return { repo, revision, items };
  });
}

/**
 * Resumable, verified downloads of the model files from a Hugging Face endpoint (`$HF_ENDPOINT`, default
 * https://huggingface.co), into either
 *  - the Hugging Face cache (default): `<hub>/models--<org>--<name>/blobs/<etag>`, `snapshots/<commit>/<file>`
 *    (relative symlinks to the blobs) and `refs/main`, as huggingface_hub writes it, so `step1x edit` and
 *    every HF tool find the files with no flags and blobs already cached are reused; or
 *  - a directory in the official layout (`--local-dir DIR`).
 * The file list lives in one place, `modelDownloadSpec` (the DiT of the asked version, the VAE, `step1x.json`
 * when the repo has one, and the Qwen2.5-VL repo's top-level weights and configs).
 *
 * Each file goes to a partial file (`<dest>.part`, or `blobs/<etag>.incomplete` in the cache) and an
 * interrupted run resumes it with an HTTP Range request. Sizes and SHA-256 come from the repo listing
 * (`/api/models/<repo>/revision/main?blobs=true`) or the file's `X-Linked-Etag`; a finished file is verified
 * before it is put in place, an existing one before it is accepted. A `.part` that is already complete
 * (the server answers 416) is verified and finished; one longer than the file is discarded. Network
 * errors and HTML answers give one line naming the URL and the cause (exit 4), and the next run resumes.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, mkdirSync, readFileSync, renameSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { describeWriteError } from './safe-write.js';
import { isPlainRelativePath } from './safe-read.js';

export { isPlainRelativePath };
import { ExitCode, Step1xError } from '../errors.js';
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

export interface DownloadProgress {
  file: string;
  received: number;
  total: number | null;
  done: boolean;
  resumed: boolean;
  /** Already present and verified: nothing was fetched. */
  cached?: boolean;
}

export function endpoint(): string {
  return (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

function authHeaders(): Record<string, string> {
  const tok = process.env.HF_TOKEN;
  return tok ? { authorization: `Bearer ${tok}` } : {};
}

const dlErr = (m: string) => new Step1xError(m, ExitCode.WEIGHTS);

/** A local write failed (full disk, read-only or missing directory): exit 7, what arrived is kept. */
export function writeErr(path: string, e: unknown): Error {
  if (e instanceof Step1xError || typeof (e as NodeJS.ErrnoException)?.code !== 'string') return e as Error;
  return new Step1xError(`cannot write ${path}: ${describeWriteError(e)}; what arrived is kept, fix this and run the command again to resume`, ExitCode.OUTPUT);
}

/** Run a download step; errno errors of the local file system become `writeErr` naming `path`. */
async function local<T>(path: string, f: () => T | Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw writeErr(path, e);
  }
}

/** "fetch failed" says nothing: name the cause (ECONNREFUSED, ENOTFOUND, a TLS error, ...). */
function netCause(e: unknown): string {
  const c = (e as { cause?: { code?: string; message?: string } }).cause;
  return c?.code ?? c?.message ?? (e as Error).message;
}

async function get(url: string, headers: Record<string, string> = {}): Promise<Response> {
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

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => {
    createReadStream(path).on('data', (d) => h.update(d)).on('end', () => res()).on('error', rej);
  });
  return h.digest('hex');
}

function headerSha(res: Response): string | undefined {
  for (const k of ['x-linked-etag', 'etag']) {
    const v = res.headers.get(k)?.replace(/^W\//, '').replace(/"/g, '');
    if (v && /^[0-9a-f]{64}$/i.test(v)) return v.toLowerCase();
  }
  return undefined;
}

const fileSize = (p: string) => (existsSync(p) ? statSync(p).size : 0);

/**
 * Fetch `url` into `part` (resuming what is there) until it holds the whole file, and verify it.
 * Returns its sha256 (computed when the server or listing named one, or when `wantSha` is set).
 */
async function fetchToPart(item: DownloadItem, url: string, part: string, onProgress?: (p: DownloadProgress) => void, wantSha = false, restarted = false): Promise<string | undefined> {
  const name = `${item.repo}/${item.file}`;
  let have = fileSize(part);
  if (item.size !== undefined && have > item.size) {
    unlinkSync(part); // longer than the file: it can never resume; start this file again
    have = 0;
  }
  let sha = item.sha256;
  let total: number | null = item.size ?? null;
  let resumed = false;
  if (!(item.size !== undefined && have === item.size)) {
    const res = await get(url, have ? { range: `bytes=${have}-` } : {});
    if (res.status === 416 && have) {
      // Range past the end: the part may already be complete. The real size is in Content-Range.
      const m = /bytes \*\/(\d+)/.exec(res.headers.get('content-range') ?? '');
      total = item.size ?? (m ? Number(m[1]) : null);
      sha ??= headerSha(res);
      await res.body?.cancel();
      if (total === null || have > total) {
        if (restarted) throw dlErr(`download of ${name}: the server refuses every range (HTTP 416) and does not say the size`);
        unlinkSync(part);
        return fetchToPart(item, url, part, onProgress, wantSha, true);
      }
    } else {
      if (!res.ok || !res.body) throw dlErr(`download of ${name} failed: HTTP ${res.status} from ${url}${res.status === 401 || res.status === 403 ? ' (set HF_TOKEN?)' : ''}`);
      if (/text\/html/i.test(res.headers.get('content-type') ?? '')) {
        await res.body.cancel();
        throw dlErr(`download of ${name}: ${url} answered with an HTML page, not the file; is HF_ENDPOINT right (or a token needed)?`);
      }
      sha ??= headerSha(res);
      resumed = res.status === 206;
      const len = Number(res.headers.get('content-length') ?? NaN);
      if (total === null && Number.isFinite(len)) total = resumed ? have + len : len;
      let received = resumed ? have : 0;
      const reader = res.body.getReader();
      let out: FileHandle;
      try {
        out = await open(part, resumed ? 'a' : 'w');
      } catch (e) {
        await reader.cancel().catch(() => undefined);
        throw writeErr(part, e);
      }
      try {
        for (;;) {
          let chunk: Uint8Array | undefined;
          try {
            const r = await reader.read();
            chunk = r.done ? undefined : r.value;
          } catch (e) {
            throw dlErr(`download of ${name} interrupted: ${netCause(e)} (${fileSize(part)} bytes kept); run the command again to resume`);
          }
          if (!chunk) break;
          try {
            await out.write(chunk); // a full disk or a read-only file system fails here, as one line (exit 7)
          } catch (e) {
            await reader.cancel().catch(() => undefined);
            throw writeErr(part, e);
          }
          received += chunk.byteLength;
          onProgress?.({ file: item.file, received, total, done: false, resumed });
        }
      } finally {
        await out.close().catch(() => undefined);
      }
    }
  }
  const size = fileSize(part);
  if (total !== null && size > total) {
    unlinkSync(part);
    throw dlErr(`download of ${name}: got ${size} bytes, more than the ${total} the file has; the partial file was removed, run the command again`);
  }
  if (total !== null && size !== total) throw dlErr(`download of ${name} incomplete (${size} of ${total} bytes); run the command again to resume`);
  if (sha || wantSha) {
    const got = await sha256File(part);
    if (sha && got !== sha) {
      unlinkSync(part);
      throw dlErr(`checksum mismatch for ${item.file}: expected sha256 ${sha}, got ${got}; the partial file was removed, run the command again`);
    }
    return got;
  }
  return undefined;
}

/** An existing file: right size and, when known, right sha256? */
async function verifyExisting(item: DownloadItem, path: string): Promise<boolean> {
  const st = statSync(path);
  if (!st.isFile()) throw dlErr(`${path} exists and is not a regular file; remove it and run the command again`);
  if (item.size !== undefined && st.size !== item.size) return false;
  if (item.sha256 && (await sha256File(path)) !== item.sha256) return false;
  return true;
}

const resolveUrl = (base: string, item: DownloadItem) => `${base}/${item.repo}/resolve/main/${item.file}`;

/** Download one file into `item.dest` (official layout) resumably; an existing destination is verified first. */
export async function downloadFile(item: DownloadItem, onProgress?: (p: DownloadProgress) => void, base = endpoint()): Promise<void> {
  return local(dirname(item.dest), () => downloadFileIn(item, onProgress, base));
}

async function downloadFileIn(item: DownloadItem, onProgress: ((p: DownloadProgress) => void) | undefined, base: string): Promise<void> {
  const part = `${item.dest}.part`;
  if (existsSync(item.dest)) {
    if (await verifyExisting(item, item.dest)) {
      const size = statSync(item.dest).size;
      onProgress?.({ file: item.file, received: size, total: size, done: true, resumed: false, cached: true });
      return;
    }
    // a damaged earlier download: a shorter one resumes, anything else starts again
    if (item.size !== undefined && statSync(item.dest).size < item.size && !existsSync(part)) renameSync(item.dest, part);
    else unlinkSync(item.dest);
  }
  mkdirSync(dirname(item.dest), { recursive: true });
  await fetchToPart(item, resolveUrl(base, item), part, onProgress);
  renameSync(part, item.dest);
  const size = statSync(item.dest).size;
  onProgress?.({ file: item.file, received: size, total: size, done: true, resumed: false });
}

function linkSnapshot(dest: string, blobPath: string): void {
  mkdirSync(dirname(dest), { recursive: true });
  try {
    if (lstatSync(dest)) unlinkSync(dest);
  } catch {
    /* not there */
  }
  symlinkSync(relative(dirname(dest), blobPath), dest);
}

/** Download one file into the HF cache: the blob (reused when present and intact), then the snapshot link. */
export async function downloadToHfCache(item: DownloadItem, onProgress?: (p: DownloadProgress) => void, base = endpoint()): Promise<void> {
  return local(dirname(item.dest), () => downloadToHfCacheIn(item, onProgress, base));
}

async function downloadToHfCacheIn(item: DownloadItem, onProgress: ((p: DownloadProgress) => void) | undefined, base: string): Promise<void> {
  const snapshotDir = item.dest.slice(0, item.dest.length - item.file.length - 1); // <repo dir>/snapshots/<rev>
  const blobs = join(dirname(dirname(snapshotDir)), 'blobs');
  mkdirSync(blobs, { recursive: true });
  if (item.blob) {
    const blobPath = join(blobs, item.blob);
    if (existsSync(blobPath) && statSync(blobPath).isFile() && (item.size === undefined || statSync(blobPath).size === item.size)) {
      // huggingface_hub puts a blob in place only once complete, under its etag: trust it as hub tools do
      linkSnapshot(item.dest, blobPath);
      onProgress?.({ file: item.file, received: statSync(blobPath).size, total: statSync(blobPath).size, done: true, resumed: false, cached: true });
      return;
    }
    const part = `${blobPath}.incomplete`;
    await fetchToPart(item, resolveUrl(base, item), part, onProgress);
    renameSync(part, blobPath);
    linkSnapshot(item.dest, blobPath);
  } else {
    // no etag from the listing: name the blob by the content's sha256 once it is here
    const part = join(blobs, `.step1x-${item.file.replace(/[^A-Za-z0-9._-]/g, '_')}.incomplete`);
    const sha = (await fetchToPart(item, resolveUrl(base, item), part, onProgress, true))!;
    const blobPath = join(blobs, sha);
    renameSync(part, blobPath);
    linkSnapshot(item.dest, blobPath);
  }
  const size = statSync(item.dest).size;
  onProgress?.({ file: item.file, received: size, total: size, done: true, resumed: false });
}

/** After every file of a repo is in its snapshot: point refs/main at it (what resolution reads). */
export function writeRef(repo: string, revision: string, hub = hfHubDir()): void {
  const refs = join(hfRepoDir(repo, hub), 'refs');
  const p = join(refs, 'main');
  try {
    mkdirSync(refs, { recursive: true });
    if (existsSync(p) && readFileSync(p, 'utf8').trim() === revision) return;
    writeFileSync(p, revision);
  } catch (e) {
    throw writeErr(p, e);
  }
}

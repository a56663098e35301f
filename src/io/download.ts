/**
 * Resumable, verified downloads of the model files from a Hugging Face endpoint (`$HF_ENDPOINT`, default
 * https://huggingface.co), into either
 *  - the Hugging Face cache (default): `<hub>/models--<org>--<name>/blobs/<etag>`, `snapshots/<commit>/<file>`
 *    (relative symlinks to the blobs) and `refs/main`, as huggingface_hub writes it, so `step1x edit` and
 *    every HF tool find the files with no flags and blobs already cached are reused; or
 *  - a directory in the official layout (`--local-dir DIR`).
 * The file list and the repo listing are io/hf-repo.ts (`modelDownloadSpec`, `listRepo`).
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
import { hfHubDir } from './model-files.js';
import { dlErr, endpoint, get, hfRepoDir, netCause, type DownloadItem } from './hf-repo.js';

// the listing and plans, for the callers of this module
export { diffusersDownloadSpec, endpoint, hfCachePlan, hfRepoDir, listRepo, listRepoFiles, modelDownloadPlan, modelDownloadSpec } from './hf-repo.js';
export type { DownloadItem, RepoFile, RepoListing, RepoSpec } from './hf-repo.js';

export interface DownloadProgress {
  file: string;
  received: number;
  total: number | null;
  done: boolean;
  resumed: boolean;
  /** Already present and verified: nothing was fetched. */
  cached?: boolean;
}

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

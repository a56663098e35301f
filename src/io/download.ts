/**
 * Resumable downloads of the model files from a Hugging Face endpoint (`$HF_ENDPOINT`, default
 * https://huggingface.co) into a directory in the official layout.
 *
 * Each file goes to `<name>.part`; an interrupted run resumes with an HTTP Range request. When the server
 * names the content's SHA-256 (LFS files: `X-Linked-Etag` / `ETag` of 64 hex digits), the finished file is
 * verified before it is renamed into place, so a complete-looking file is always a correct one.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, statSync, renameSync, unlinkSync, createWriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { ExitCode, Step1xError } from '../errors.js';
import { DIT_FILE_OF, HF_REPO_QWEN, HF_REPO_STEP1X, QWEN_DIR, VAE_FILE, type CheckpointVersion } from './model-files.js';

export interface DownloadItem {
  repo: string;
  file: string; // path inside the repo
  dest: string; // local path
}

export interface DownloadProgress {
  file: string;
  received: number;
  total: number | null;
  done: boolean;
  resumed: boolean;
}

export function endpoint(): string {
  return (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

function authHeaders(): Record<string, string> {
  const tok = process.env.HF_TOKEN;
  return tok ? { authorization: `Bearer ${tok}` } : {};
}

/** Files of a repo revision (`/api/models/<repo>` → siblings). */
export async function listRepoFiles(repo: string, base = endpoint()): Promise<string[]> {
  const url = `${base}/api/models/${repo}`;
  let res: Response;
  try {
    res = await fetch(url, { headers: authHeaders() });
  } catch (e) {
    throw new Step1xError(`cannot reach ${url}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  if (!res.ok) throw new Step1xError(`listing ${repo} failed: HTTP ${res.status} from ${url}`, ExitCode.WEIGHTS);
  const j = (await res.json()) as { siblings?: { rfilename: string }[] };
  return (j.siblings ?? []).map((s) => s.rfilename);
}

/** What a full model directory needs: the DiT (v1.1 unless asked for v1.0), the VAE, and the Qwen2.5-VL repo's weights and configs. */
export async function modelDownloadPlan(dir: string, base = endpoint(), version: CheckpointVersion = 'v1.1'): Promise<DownloadItem[]> {
  const dit = DIT_FILE_OF[version];
  const items: DownloadItem[] = [
    { repo: HF_REPO_STEP1X, file: dit, dest: join(dir, dit) },
    { repo: HF_REPO_STEP1X, file: VAE_FILE, dest: join(dir, VAE_FILE) },
  ];
  const qwen = await listRepoFiles(HF_REPO_QWEN, base);
  for (const f of qwen)
    if (/\.(safetensors|json|txt|jinja)$/.test(f) && !f.includes('/'))
      items.push({ repo: HF_REPO_QWEN, file: f, dest: join(dir, QWEN_DIR, f) });
  return items;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => {
    createReadStream(path).on('data', (d) => h.update(d)).on('end', () => res()).on('error', rej);
  });
  return h.digest('hex');
}

function expectedSha(res: Response): string | null {
  for (const k of ['x-linked-etag', 'etag']) {
    const v = res.headers.get(k)?.replace(/^W\//, '').replace(/"/g, '');
    if (v && /^[0-9a-f]{64}$/i.test(v)) return v.toLowerCase();
  }
  return null;
}

/** Download one file resumably; a finished destination is left alone. */
export async function downloadFile(item: DownloadItem, onProgress?: (p: DownloadProgress) => void, base = endpoint()): Promise<void> {
  if (existsSync(item.dest)) {
    onProgress?.({ file: item.file, received: statSync(item.dest).size, total: statSync(item.dest).size, done: true, resumed: false });
    return;
  }
  mkdirSync(dirname(item.dest), { recursive: true });
  const part = `${item.dest}.part`;
  const have = existsSync(part) ? statSync(part).size : 0;
  const url = `${base}/${item.repo}/resolve/main/${item.file}`;
  let res: Response;
  try {
    res = await fetch(url, { headers: { ...authHeaders(), ...(have ? { range: `bytes=${have}-` } : {}) }, redirect: 'follow' });
  } catch (e) {
    throw new Step1xError(`cannot reach ${url}: ${(e as Error).message}`, ExitCode.WEIGHTS);
  }
  if (res.status === 416 && have) {
    // Range past the end: the part file is already complete.
  } else if (!res.ok || !res.body) {
    throw new Step1xError(`download of ${item.repo}/${item.file} failed: HTTP ${res.status}`, ExitCode.WEIGHTS);
  }
  const resumed = res.status === 206;
  const len = Number(res.headers.get('content-length') ?? NaN);
  const total = Number.isFinite(len) ? (resumed ? have + len : len) : null;
  let received = resumed ? have : 0;
  if (res.status !== 416) {
    const out = createWriteStream(part, { flags: resumed ? 'a' : 'w' });
    const reader = res.body!.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (!out.write(value)) await new Promise<void>((r) => out.once('drain', () => r()));
        received += value.byteLength;
        onProgress?.({ file: item.file, received, total, done: false, resumed });
      }
    } finally {
      await new Promise<void>((r) => out.end(r));
    }
  }
  const size = statSync(part).size;
  if (total !== null && size !== total)
    throw new Step1xError(`download of ${item.file} incomplete (${size} of ${total} bytes); run the command again to resume`, ExitCode.WEIGHTS);
  const sha = expectedSha(res);
  if (sha) {
    const got = await sha256File(part);
    if (got !== sha) {
      unlinkSync(part);
      throw new Step1xError(`checksum mismatch for ${item.file}: expected sha256 ${sha}, got ${got}; the partial file was removed`, ExitCode.WEIGHTS);
    }
  }
  renameSync(part, item.dest);
  onProgress?.({ file: item.file, received: size, total: size, done: true, resumed });
}

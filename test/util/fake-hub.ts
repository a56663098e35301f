/**
 * A loopback fake of the Hugging Face hub: `/api/models/<repo>/revision/main?blobs=true` listings with
 * sizes, LFS sha256 and git blob ids, and `/<repo>/resolve/main/<file>` with Range support and the
 * `X-Linked-Etag` header of LFS files. Knobs reproduce the failures of issue 13 item 2.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export interface HubFile {
  data: Buffer;
  lfs: boolean;
}

export interface FakeHub {
  base: string;
  repos: Map<string, { sha: string; files: Map<string, HubFile> }>;
  /** Every request path, in order. */
  log: string[];
  /** Per-request behaviour overrides. */
  mode: { html?: 'listing' | 'file'; dropAfter?: number; stallAfter?: number; range416ContentLength?: number };
  close(): Promise<void>;
}

export const gitBlobId = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Files of a directory (top level) as hub files; *.safetensors are LFS. */
export function dirFiles(dir: string, rename: Record<string, string> = {}): Map<string, HubFile> {
  const m = new Map<string, HubFile>();
  for (const n of readdirSync(dir)) if (statSync(join(dir, n)).isFile()) m.set(rename[n] ?? n, { data: readFileSync(join(dir, n)), lfs: n.endsWith('.safetensors') });
  return m;
}

export async function startFakeHub(repos: Record<string, Map<string, HubFile>>): Promise<FakeHub> {
  const hub: FakeHub = {
    base: '',
    repos: new Map(Object.entries(repos).map(([r, files], i) => [r, { sha: createHash('sha1').update(`rev${i}${r}`).digest('hex'), files }])),
    log: [],
    mode: {},
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
  const server: Server = createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? '');
    hub.log.push(url);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/main/.exec(url);
    if (api) {
      const r = hub.repos.get(api[1]);
      if (hub.mode.html === 'listing') {
        res.setHeader('content-type', 'text/html');
        res.end('<!doctype html><html><body>Sign in</body></html>');
        return;
      }
      if (!r) return void ((res.statusCode = 404), res.end());
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          sha: r.sha,
          siblings: [...r.files].map(([name, f]) => ({
            rfilename: name,
            size: f.data.length,
            blobId: gitBlobId(f.data),
            ...(f.lfs ? { lfs: { sha256: sha256(f.data), size: f.data.length } } : {}),
          })),
        }),
      );
      return;
    }
    const m = /^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(url);
    const f = m ? hub.repos.get(m[1])?.files.get(m[2]) : undefined;
    if (!f) return void ((res.statusCode = 404), res.end('not found'));
    if (hub.mode.html === 'file') {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end('<html>rate limited</html>');
      return;
    }
    const body = f.data;
    res.setHeader('etag', `"${gitBlobId(body)}"`);
    if (f.lfs) res.setHeader('x-linked-etag', `"${sha256(body)}"`);
    const rm = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let start = 0;
    if (rm) {
      start = Number(rm[1]);
      if (start >= body.length) {
        res.statusCode = 416;
        res.setHeader('content-range', `bytes */${body.length}`);
        // as HF's CDN does: the 416 answer's own (error page) length, not the file's
        const page = Buffer.alloc(hub.mode.range416ContentLength ?? 31, 0x20);
        res.setHeader('content-length', String(page.length));
        res.end(page);
        return;
      }
      res.statusCode = 206;
      res.setHeader('content-range', `bytes ${start}-${body.length - 1}/${body.length}`);
    }
    res.setHeader('content-length', String(body.length - start));
    const rest = body.subarray(start);
    if (hub.mode.dropAfter !== undefined && rest.length > hub.mode.dropAfter) {
      res.write(rest.subarray(0, hub.mode.dropAfter), () => res.destroy());
      return;
    }
    if (hub.mode.stallAfter !== undefined && rest.length > hub.mode.stallAfter) {
      res.write(rest.subarray(0, hub.mode.stallAfter)); // then nothing: the client waits
      return;
    }
    res.end(rest);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const addr = server.address();
  hub.base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  const origClose = hub.close;
  hub.close = () => {
    server.closeAllConnections();
    return origClose();
  };
  return hub;
}

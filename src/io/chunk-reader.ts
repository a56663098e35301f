/**
 * Positional reads for the safetensors reader: `readFully` (one byte range, in int32-sized reads) and
 * `readChunks` (a long range as chunks of two reused buffers, the next read in flight; what streamed
 * weight loading runs on, nn/upload.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import { ExitCode, Step1xError } from '../errors.js';

/** One positional read at most this long (FileHandle.read takes an int32 length). */
const READ_CHUNK = 1 << 30;
/**
 * Chunk of a streamed tensor read (readChunks), and so of each `queue.writeBuffer` of a load. 4 MiB: the
 * size of the buffers of Dawn's upload ring (a larger write gets a staging buffer of its own). One sweep on
 * the dev VM (lavapipe, page cache warm, 1.13 GB): read + writeBuffer at 1–4 MiB chunks ≈ 3.4–3.7 GB/s, at
 * 8–16 MiB ≈ 0.6–0.9 GB/s (other sweeps, under heavier load, showed no difference); positional reads alone
 * run alike from 1 to 8 MiB, and the per-read overhead (~20 µs) stays < 1 %.
 */
export const LOAD_CHUNK_BYTES = 4 << 20;

/**
 * Read buffers shared by every file and stream: a stream takes two and gives them back when it ends, so a
 * load of any number of tensors allocates them once. At most `maxCached` idle buffers are kept.
 */
class ReadBuffers {
  private idle: Uint8Array[] = [];
  constructor(private readonly maxCached = 8) {}
  acquire(bytes: number): Uint8Array {
    const i = this.idle.findIndex((b) => b.byteLength >= bytes);
    return i >= 0 ? this.idle.splice(i, 1)[0] : new Uint8Array(Math.max(bytes, LOAD_CHUNK_BYTES));
  }
  release(b: Uint8Array): void {
    if (this.idle.length < this.maxCached) this.idle.push(b);
  }
}
const readBuffers = new ReadBuffers();

/** Bytes [pos, pos + len) as chunks of `chunkBytes`, views of reused buffers valid until the next iteration. */
export async function* readChunks(fh: FileHandle, path: string, pos: number, len: number, chunkBytes = LOAD_CHUNK_BYTES): AsyncGenerator<Uint8Array> {
  if (!(chunkBytes > 0)) throw new Error(`readChunks: chunk of ${chunkBytes} bytes`);
  if (len <= 0) return;
  const bufs = [readBuffers.acquire(chunkBytes), readBuffers.acquire(chunkBytes)];
  const read = (i: number, off: number): Promise<Uint8Array> => {
    const view = bufs[i % 2].subarray(0, Math.min(chunkBytes, len - off));
    const p = readFully(fh, path, view, pos + off).then(() => view);
    p.catch(() => undefined); // awaited below; a read the caller abandons must not be an unhandled rejection
    return p;
  };
  let next: Promise<Uint8Array> | null = read(0, 0);
  try {
    for (let off = 0, i = 0; off < len; off += chunkBytes, i++) {
      const cur: Uint8Array = await next!;
      next = off + chunkBytes < len ? read(i + 1, off + chunkBytes) : null;
      yield cur;
    }
  } finally {
    await next?.catch(() => undefined); // the buffer goes back only once nothing writes into it
    for (const b of bufs) readBuffers.release(b);
  }
}

export async function readFully(fh: FileHandle, path: string, buf: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const len = Math.min(READ_CHUNK, buf.length - done);
    const { bytesRead } = await fh.read(buf, done, len, pos + done);
    if (bytesRead === 0)
      throw new Step1xError(`${path}: unexpected end of file at byte ${pos + done} (file changed or truncated?)`, ExitCode.USAGE);
    done += bytesRead;
  }
}

/** Golden io.safetensors access shared by the CPU tests: open per case, close all after the file's tests. */
import { afterAll } from '@jest/globals';
import { join } from 'node:path';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { RgbImage } from '../../src/io/resize.js';
import { goldenCase } from './golden-path.js';

/** `io(caseName)` opens a case's io.safetensors; every file opened is closed after the test file. */
export function goldenIo(): (caseName: string) => Promise<SafetensorsFile> {
  const files: SafetensorsFile[] = [];
  afterAll(async () => {
    for (const f of files) await f.close();
  });
  return async (caseName) => {
    const f = await SafetensorsFile.open(join(goldenCase(caseName), 'io.safetensors'));
    files.push(f);
    return f;
  };
}

/** A U8 [H, W, 3] golden tensor as an image. */
export async function u8Image(f: SafetensorsFile, name: string): Promise<RgbImage> {
  const [h, w] = f.tensors.get(name)!.shape;
  return { width: w, height: h, data: await f.readBytes(name) };
}

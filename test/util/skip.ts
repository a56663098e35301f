/**
 * The one way a test may be skipped: explicitly, with the reason printed and the skip counted in jest's
 * summary line ("Tests: … skipped"). A silent `return` or `continue` when data is missing is a test that
 * cannot fail; use this (or fail hard) instead.
 */
import { test } from '@jest/globals';

type Fn = () => unknown;

/** `test(name, fn)` when `reason` is undefined, else a counted `test.skip` whose name carries the reason, printed once. */
export function testUnless(reason: string | undefined, name: string, fn: Fn, timeout?: number): void {
  if (reason === undefined) {
    test(name, fn as () => Promise<void>, timeout);
    return;
  }
  process.stderr.write(`SKIPPED: ${name}: ${reason}\n`);
  test.skip(`${name} [SKIPPED: ${reason}]`, fn as () => Promise<void>);
}

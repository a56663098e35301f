#!/usr/bin/env node
// Thin launcher: the CLI lives in src/cli (compiled to dist/ by `npm run build`). The command runs in a
// child process supervised by this one (src/cli/supervisor.ts: Dawn's native log lines are kept off
// stderr, signals always end the command); STEP1X_SUPERVISED=1 runs it in this process instead.
import { fileURLToPath } from 'node:url';

if (process.env.STEP1X_SUPERVISED === '1') {
  const { adoptTerminalFromLauncher } = await import('../dist/src/cli/supervisor.js');
  adoptTerminalFromLauncher();
  const { main } = await import('../dist/src/cli/main.js');
  main(process.argv);
} else {
  const { supervise } = await import('../dist/src/cli/supervisor.js');
  supervise(fileURLToPath(import.meta.url), process.argv.slice(2));
}

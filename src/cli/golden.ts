import type { Command } from 'commander';
/** Placeholder: replaced by the owner of the `golden` command. */
export function register(_program: Command): void {}

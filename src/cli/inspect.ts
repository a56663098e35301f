import type { Command } from 'commander';
/** Placeholder: replaced by the owner of the `inspect` command. */
export function register(_program: Command): void {}

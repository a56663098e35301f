/**
 * Text that comes from a file (PNG text chunks, tensor names, metadata, error messages quoting them)
 * must not drive the terminal: ANSI/OSC escape sequences, C1 controls and bidirectional overrides are
 * shown as `\uXXXX` instead of being sent raw. Newlines and tabs stay (callers split lines themselves);
 * the escape form is also valid inside a JSON string, so JSON output stays parseable.
 */
// C0 except \t and \n, DEL, C1, the bidi embeddings/overrides/isolates, line/paragraph separators, and
// the invisible format characters (zero-width space/joiners, LRM/RLM, word joiner, BOM)
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;

export function sanitizeForTerminal(s: string): string {
  return s.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

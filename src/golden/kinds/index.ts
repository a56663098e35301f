/**
 * Every golden kind, registered lazily (a case only loads the modules of its own kind). Add a line per
 * new `src/golden/kinds/<kind>.ts` (exporting `run(ctx)`).
 */
import { registerLazyKind } from '../registry.js';

registerLazyKind('vae', () => import('./vae.js'));
registerLazyKind('dit', () => import('./dit.js'));
registerLazyKind('sampler', () => import('./sampler.js'));
registerLazyKind('qwen_vl', () => import('./qwen_vl.js'));
registerLazyKind('pipeline', () => import('./pipeline.js'));
registerLazyKind('t2i', () => import('./pipeline.js'));
registerLazyKind('e2e', () => import('./e2e.js'));
registerLazyKind('qwen_processor', () => import('./qwen_processor.js'));
registerLazyKind('prompt_layout', () => import('./prompt_layout.js'));
registerLazyKind('v12_parsers', () => import('./v12_parsers.js'));
registerLazyKind('v12_sampling', () => import('./v12_sampling.js'));
registerLazyKind('v12_thinker', () => import('./v12_thinker.js'));
registerLazyKind('v12_loop', () => import('./v12_loop.js'));
registerLazyKind('v12_e2e', () => import('./v12_e2e.js'));

/**
 * Capabilities of the adapters the plans are written for, as the plan tests (plan-profiles.test.ts) see
 * them: read through `readCapabilities` from the dry run's adapters (src/runtime/dryrun/profiles.ts), so the
 * plans asserted here are the plans `STEP1X_DRYRUN=<id>` runs, from one table of device facts (its header
 * gives the sources). Binding limit: the profile's maxStorageBufferBindingSize.
 */
import { readCapabilities, type Capabilities } from '../src/runtime/caps.js';
import { dryAdapter } from '../src/runtime/dryrun/mock.js';
import { PROFILES as DRY } from '../src/runtime/dryrun/profiles.js';
import { Recorder } from '../src/runtime/dryrun/recorder.js';

export interface DeviceProfile {
  name: string;
  caps: Capabilities;
  maxBindingBytes: number;
}

const NAMES: Record<string, string> = {
  h100: 'H100 (Vulkan)', rtx4090: 'RTX 4090 (Vulkan)', m2max: 'M2 Max (Metal)', rdna3: 'RDNA3 (Vulkan)', xe2: 'Xe2 (Vulkan, Mesa)', lavapipe: 'lavapipe (Mesa 26.1)',
};

export const PROFILES: DeviceProfile[] = Object.values(DRY).map((p) => ({
  name: NAMES[p.id] ?? p.id,
  caps: readCapabilities(dryAdapter(p, new Recorder(p))),
  maxBindingBytes: p.limits.maxStorageBufferBindingSize,
}));

export function byName(name: string): DeviceProfile {
  const p = PROFILES.find((q) => q.name.startsWith(name));
  if (!p) throw new Error(`no device profile ${name}`);
  return p;
}

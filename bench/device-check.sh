#!/usr/bin/env bash
# Runs ON the lent GPU machine (x86-64, NVIDIA, PyTorch, no Node, no network), from the repo root, with
# carry ["dist", ".device"] made by bench/prepare-device.sh. One command, about 8 minutes at most:
#
#   bash bench/device-check.sh            (writes under $OUT; prints the ours / PyTorch table last)
#
# Steps, each under its own timeout so one hang cannot eat the rest:
#   0. node from .device/node.xz, node_modules from .device/node_modules.tar.xz, the Vulkan loader from
#      .device/gl/*.deb when `ldconfig -p` has none, VK_DRIVER_FILES when Dawn finds no NVIDIA adapter
#   1. node bin/step1x.js devices                          (must show the NVIDIA adapter)
#   2. node dist/kernels-test/bench.js --full              -> $OUT/bench.log
#   3. node dist/kernels-test/block-bench.js               -> $OUT/block.log, $OUT/block.json
#   4. python3 bench/torch_ref.py                          -> $OUT/torch.log, $OUT/torch.json
#   5. python3 bench/torch_ref.py --summarize $OUT         -> $OUT/summary.md (printed last)
#   6. if time is left: STEP1X_PROFILE=1 block-bench --iters 1 -> $OUT/block-profile.log (per-kernel GPU ms)
# Everything printed also goes to $OUT/device-check.log. At most 8 files come back: these are 8.
# Budgets (seconds) can be overridden: T_BENCH, T_BLOCK, T_TORCH, T_TOTAL.
# CHECK_SMALL=1 (a dry run on a machine without NVIDIA, e.g. lavapipe): any adapter, bench.js default sizes,
# block-bench --small.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/step1x-out}
mkdir -p "$OUT"
# the whole run goes to $OUT/device-check.log too (a pipe, not exec > >(tee): tee must finish before we exit)
main() {
T_BENCH=${T_BENCH:-210}
T_BLOCK=${T_BLOCK:-120}
T_TORCH=${T_TORCH:-100}
T_TOTAL=${T_TOTAL:-480}
CHECK_SMALL=${CHECK_SMALL:-0}
SIZE_BENCH=--full SIZE_BLOCK=
((CHECK_SMALL)) && SIZE_BENCH= SIZE_BLOCK=--small
WANT=nvidia
((CHECK_SMALL)) && WANT=adapter
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
step() { printf '\n===== [%4ss] %s\n' "$(elapsed)" "$*"; }

step "machine"
uname -a
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true

step "node"
mkdir -p /tmp/step1x-node/bin
# xz may not be installed there: python3's lzma / tarfile always are
unxz() { if command -v xz >/dev/null; then xz -dc "$1"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi; }
untarxz() {
  if command -v xz >/dev/null; then tar -xJf "$1"
  else python3 -c 'import tarfile,sys; t=tarfile.open(sys.argv[1], "r:xz"); t.extractall(".", **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))' "$1"; fi
}
unxz .device/node.xz > /tmp/step1x-node/bin/node && chmod +x /tmp/step1x-node/bin/node || { echo "FATAL: cannot unpack node"; exit 1; }
export PATH=/tmp/step1x-node/bin:$PATH
node --version || { echo "FATAL: node does not run here"; exit 1; }
if [[ ! -f node_modules/webgpu/dist/linux-x64/dawn.node ]]; then
  rm -rf node_modules
  untarxz .device/node_modules.tar.xz || { echo "FATAL: cannot unpack node_modules"; exit 1; }
fi
[[ -f dist/kernels-test/bench.js && -f dist/kernels-test/block-bench.js ]] || { echo "FATAL: dist/ missing: carry [\"dist\", \".device\"] after npm run build"; exit 1; }

step "Vulkan loader"
if ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  echo "libvulkan present:"; ldconfig -p | grep libvulkan
else
  echo "no libvulkan: unpacking .device/gl/*.deb (device README recipe)"
  for f in .device/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  ldconfig -p | grep -i 'vulkan\|GLX\|EGL' | head
fi
ls /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null || true

step "step1x devices"
DEV_LOG=/tmp/step1x-devices.log
timeout 60 node bin/step1x.js devices > "$DEV_LOG" 2>&1
rc=$?
if ((rc != 0)) || ! grep -qi "$WANT" "$DEV_LOG"; then
  echo "(no NVIDIA adapter, rc $rc:)"; head -5 "$DEV_LOG"
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [[ -f $icd ]] || continue
    echo "retrying with VK_DRIVER_FILES=$icd"
    export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
    [[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    timeout 60 node bin/step1x.js devices > "$DEV_LOG" 2>&1
    rc=$?
    ((rc == 0)) && grep -qi "$WANT" "$DEV_LOG" && break
  done
fi
cat "$DEV_LOG"
if ((rc != 0)) || ! grep -qi "$WANT" "$DEV_LOG"; then
  echo "FATAL: Dawn finds no NVIDIA adapter (rc $rc); running only the PyTorch side"
  NO_ADAPTER=1
else
  NO_ADAPTER=0
fi

if ((NO_ADAPTER == 0)); then
  step "bench.js $SIZE_BENCH (timeout ${T_BENCH}s)"
  timeout "$T_BENCH" node dist/kernels-test/bench.js $SIZE_BENCH 2>&1 | grep -v '^Warning: maxDynamic' | tee "$OUT/bench.log"
  echo "bench rc ${PIPESTATUS[0]}"

  step "block-bench (timeout ${T_BLOCK}s)"
  timeout "$T_BLOCK" node dist/kernels-test/block-bench.js $SIZE_BLOCK --json "$OUT/block.json" 2>&1 | grep -v '^Warning: maxDynamic' | tee "$OUT/block.log"
  echo "block-bench rc ${PIPESTATUS[0]}"
fi

step "PyTorch reference (timeout ${T_TORCH}s)"
PYTHONUNBUFFERED=1 timeout "$T_TORCH" python3 bench/torch_ref.py --out "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
echo "torch_ref rc ${PIPESTATUS[0]}"

left=$((T_TOTAL - $(elapsed)))
if ((NO_ADAPTER == 0 && left > 60)); then
  step "block-bench with STEP1X_PROFILE=1, 1 iter (timeout $((left - 20))s)"
  STEP1X_PROFILE=1 timeout $((left - 20)) node dist/kernels-test/block-bench.js $SIZE_BLOCK --iters 1 > "$OUT/block-profile.log" 2>&1
  echo "profile rc $?; $(wc -l < "$OUT/block-profile.log") lines in block-profile.log"
fi

step "summary (ours / PyTorch; ratio > 1 = we are slower)"
python3 bench/torch_ref.py --summarize "$OUT"
echo "total $(elapsed)s"
return "$NO_ADAPTER"
}
main "$@" 2>&1 | tee "$OUT/device-check.log"
exit "${PIPESTATUS[0]}"

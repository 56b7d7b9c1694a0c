#!/usr/bin/env bash
# Quick start 1/2: set up, then let ptdiag diagnose a bundled ResNet whose loss goes NaN.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/${PTDIAG_VENV:-.venv}/bin:$PATH"
exec ptdiag "loss is NaN after epoch 3" "$@" -- python sample_models/resnet_nan.py --bug lr --threads 1

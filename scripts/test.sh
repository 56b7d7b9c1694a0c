#!/usr/bin/env bash
# Quick start 2/2: set up, then run the whole test suite (CPU; slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PTDIAG_VENV:-.venv}/bin/python" -m pytest "$@"

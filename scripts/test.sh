#!/usr/bin/env bash
# Quick start 2/2: set up, then run the whole test suite (CPU; slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report is tested in a real headless browser (Debian's chromium); without it
# those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ptdiag test: installing chromium for the browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/tmp/ptdiag-chromium-install.log 2>&1 || echo "ptdiag test: chromium not installed (see /tmp/ptdiag-chromium-install.log)" >&2
fi
# Two workers: most end-to-end tests wait on one single-threaded training process (the
# whole suite, 862 tests: ~19 CPU minutes, ~13 min with -n 2 on a loaded 2-core box;
# docs/benchmarks.md "Test suite").
exec "${PTDIAG_VENV:-.venv}/bin/python" -m pytest -n 2 "$@"

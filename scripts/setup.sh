#!/usr/bin/env bash
# Create (or reuse) the venv with the tested versions of torch and everything else.
# Reused as long as constraints.txt and pyproject.toml are unchanged; otherwise rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PTDIAG_VENV:-.venv}"
stamp="$VENV/.ptdiag-setup"
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "ptdiag setup: installing into $VENV (torch from this machine's files, ~90 s)..." >&2
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
log="$(mktemp)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt -e ".[test]" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  echo "ptdiag setup: pip install failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "$want" >"$stamp"
echo "ptdiag setup: done" >&2

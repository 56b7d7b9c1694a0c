#!/usr/bin/env bash
# Run the whole tool on a real GPU: the sample models on CUDA, through the CLI, with
# reports checked. Exits non-zero on the first failure; prints a summary table.
# Usage: bash scripts/gpu_smoke.sh [OUT_DIR]   (results and run store go to OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="$PWD/${PTDIAG_VENV:-.venv}/bin/python"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_smoke: no CUDA device visible to torch")'
"$PY" -m ptdiag env | tee "$OUT/env.txt"
check() {  # name, expected status, ptdiag args...
  local name="$1" want="$2"; shift 2
  "$PY" -m ptdiag "$@" --json "$OUT/$name.json" --store "$OUT/runs" || true
  got="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$OUT/$name.json")"
  printf '%-10s want %-10s got %s\n' "$name" "$want" "$got" | tee -a "$OUT/summary.txt"
  [ "$got" = "$want" ]
}
check healthy completed "training is slow" -- "$PY" sample_models/resnet_healthy.py --device cuda --epochs 2
check nan diverged "loss is NaN after epoch 3" -- "$PY" sample_models/resnet_nan.py --device cuda --bug lr --epochs 8
"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["environment"]["gpus"], "no GPU in report"' "$OUT/healthy.json"
echo "gpu_smoke: ok ($OUT)"

"""Run every case of cases.jsonl under ptdiag with real torchrun (2 gloo ranks on CPU) and
check the expected finding codes and evidence; prints one line per case, exit 1 on a miss.

    .venv/bin/python diagnostics/distributed/check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_case(case: dict, port: int) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "ptdiag", case["symptom"], *case["ptdiag_args"], "--quiet",
                   "--json", "r.json", "--", sys.executable, "-m", "torch.distributed.run",
                   "--nproc_per_node", "2", "--master_port", str(port), str(HERE / case["script"])]
        env = {k: v for k, v in os.environ.items() if k != "PTDIAG_STORE"}
        subprocess.run(command, cwd=tmp, env=env, capture_output=True, timeout=600)
        report = json.loads((Path(tmp) / "r.json").read_text())
    found = {f["code"]: f for f in report["findings"]}
    misses = [code for code in case["expect"] if code not in found]
    for code, wanted in case.get("evidence", {}).items():
        got = found.get(code, {}).get("evidence", {})
        misses += [f"{code}.{k}={got.get(k)!r} (want {v!r})" for k, v in wanted.items() if got.get(k) != v]
    summary = f"status {report['status']}; " + ", ".join(f"{c}: {f['title']}" for c, f in found.items()
                                                         if c.startswith("distributed."))
    return not misses, summary if not misses else "MISSING " + "; ".join(misses) + " | " + summary


def main() -> int:
    cases = [json.loads(line) for line in (HERE / "cases.jsonl").read_text().splitlines() if line.strip()]
    failed = 0
    for i, case in enumerate(cases):
        ok, summary = run_case(case, 29850 + i)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {case['script']}: {summary}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The reproducibility corpus (diagnostics/reproducibility): each realistic script gets
the findings its case lists, with the evidence it lists."""

from __future__ import annotations

import json

import pytest

from conftest import PYTHON, REPO, load_report, run_ptdiag

pytestmark = pytest.mark.slow

CORPUS = REPO / "diagnostics" / "reproducibility"
CASES = json.loads((CORPUS / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["script"] for c in CASES])
def test_corpus_case(workdir, case):
    script = str(CORPUS / case["script"])
    options = [o.format(python=PYTHON, script=script) for o in case["options"]]
    proc = run_ptdiag("not reproducible", "--only", "reproducibility", "--json", "r.json", *options, "--",
                      PYTHON, script, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    found = {f["code"]: f["evidence"] for f in load_report(workdir / "r.json")["findings"]}
    for code, fields in case["expect"].items():
        assert code in found, sorted(found)
        for key, want in fields.items():
            got = found[code][key]
            if key == "missing":
                got = [m["state"] for m in got]
            assert got == want, (code, key, got)
    assert not set(case["absent"]) & set(found)

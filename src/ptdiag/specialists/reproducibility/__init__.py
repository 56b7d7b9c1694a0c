"""The reproducibility specialist: proof, not advice, that a run repeats and resumes.

- determinism: the command runs twice (parent.py); every step's batch, loss, learning
  rate, generator states and parameter/buffer checksums are compared (compare.py), and
  the first difference is explained by what was measured (determinism.py);
- seeding: generators the training drew from that the program never seeded;
- checkpoints: every torch.save described, what an exact resume would miss, files
  overwritten with nothing to tell versions apart (checkpoints.py, needs.py);
- resume: the resume command runs from the checkpoint of step K and is compared step
  for step with the uninterrupted run (resume.py);
- `ptdiag inspect CKPT.pt`: checkpoint.py.
"""

from __future__ import annotations

from ptdiag.findings import Analysis
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.reproducibility.checkpoints import checkpoint_findings
from ptdiag.specialists.reproducibility.compare import compare
from ptdiag.specialists.reproducibility.determinism import determinism_findings, unseeded_findings
from ptdiag.specialists.reproducibility.resume import resume_findings
from ptdiag.specialists.reproducibility.trace import AUDIT, REPEAT, RESUME, Trace, companion


def analyse(run: RecordedRun) -> Analysis:
    main = Trace.of(run)
    repeat = companion(run, REPEAT)
    findings = determinism_findings(main, repeat, companion(run, AUDIT))
    findings += unseeded_findings(main, repeat)
    findings += checkpoint_findings(main)
    repeat_difference = compare(main, repeat).difference if repeat else None
    findings += resume_findings(main, companion(run, RESUME),
                                repeat_difference.step if repeat_difference else None)
    return Analysis(findings=findings)

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

from pathlib import Path

from ptdiag.findings import Analysis
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.reproducibility.checkpoints import checkpoint_findings
from ptdiag.specialists.reproducibility.compare import compare
from ptdiag.specialists.reproducibility.determinism import determinism_findings, unseeded_findings
from ptdiag.specialists.reproducibility.resume import resume_findings
from ptdiag.specialists.reproducibility.trace import AUDIT, COMPANIONS, REPEAT, RESUME, Trace, companion


def analyse(run: RecordedRun) -> Analysis:
    main = Trace.of(run)
    repeat = companion(run, REPEAT)
    findings = determinism_findings(main, repeat, companion(run, AUDIT))
    findings += unseeded_findings(main, repeat)
    findings += checkpoint_findings(main)
    repeat_difference = compare(main, repeat).difference if repeat else None
    findings += resume_findings(main, companion(run, RESUME),
                                repeat_difference.step if repeat_difference else None)
    return Analysis(findings=findings, artifacts=companion_runs(run))


def companion_runs(run: RecordedRun) -> dict[str, str]:
    """Each companion run's folder (its events, stdout.log and stderr.log): the program's
    output of those runs is there, not in the user's streams."""
    folders = {name: Path(run.run_dir) / COMPANIONS / name for name in (REPEAT, AUDIT, RESUME)}
    return {f"{name}_run": str(folder) for name, folder in folders.items() if folder.is_dir()}

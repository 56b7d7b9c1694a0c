"""The distributed specialist: torchrun/DDP set-up, data sharding, replica consistency,
hangs and collective mismatches, stragglers; and NCCL Flight Recorder dumps.

`probe.py` measures inside each rank; `analyse(run)` reads the run dir (plus the other
nodes' runs of the same job in the same store, see `job.py`) and runs the checks in
`checks_*.py`. Flight Recorder dumps found under `<run_dir>/flight_recorder/` (written
when TORCH_FR_DUMP_TEMP_FILE points there) are analysed with `flight_recorder.py`.
"""

from __future__ import annotations

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.distributed import checks_data, checks_hang, checks_launch, checks_replicas, checks_straggler
from ptdiag.specialists.distributed.job import Job

from ptdiag.events import FLIGHT_RECORDER_DIR, FR_DUMP_STEM, FR_PIPE_STEM

CHECKS = (
    checks_launch.env_findings,
    checks_launch.device_findings,
    checks_launch.ddp_findings,
    checks_launch.batchnorm_findings,
    checks_data.sampler_findings,
    checks_data.set_epoch_findings,
    checks_replicas.unused_findings,
    checks_replicas.divergence_findings,
    checks_straggler.straggler_findings,
)

def _torch_older_than(major: int, minor: int) -> bool:
    """The installed torch's version, read without importing torch (unknown: older)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        numbers = version("torch").split("+")[0].split(".")[:2]
        return (int(numbers[0]), int(numbers[1])) < (major, minor)
    except (PackageNotFoundError, ValueError, IndexError):
        return True


# NCCL's Flight Recorder: keep the last collectives of each rank and dump them into the
# run dir when a collective times out (no effect on gloo), or when ptdiag's --timeout
# writes to the rank's pipe (ProcessGroupNCCL's heartbeat monitor polls it: DumpPipe in
# ProcessGroupNCCL.hpp, `<stem><global rank>.pipe`, made by the default group only);
# analysed by flight_recorder.py. torch 2.11 renamed the buffer size to TORCH_FR_BUFFER_SIZE
# and prints a deprecation line on every rank's stderr for the old name, which the
# program's output must not gain.
CHILD_ENV = {
    "TORCH_FR_BUFFER_SIZE": "2000",
    **({"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000"} if _torch_older_than(2, 11) else {}),
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_FR_DUMP_TEMP_FILE": "{run_dir}/" + FLIGHT_RECORDER_DIR + "/" + FR_DUMP_STEM,
    "TORCH_NCCL_DEBUG_INFO_PIPE_FILE": "{run_dir}/" + FLIGHT_RECORDER_DIR + "/" + FR_PIPE_STEM,
}


def analyse(run: RecordedRun) -> Analysis:
    from ptdiag.verdict import run_status

    job = Job.from_run(run)
    analysis = Analysis()
    if not job.distributed:
        return analysis
    findings = checks_hang.hang_findings(job, run_status(run))
    for check in CHECKS:
        findings.extend(check(job))
    analysis.findings = findings + _job_findings(job) + _flight_recorder(run).findings
    analysis.metrics["distributed"] = {
        "job": job.identity, "world_size": job.world_size, "ranks_seen": sorted(job.ranks), "runs": job.runs,
        "consistency_checked_steps": [c["step"] for c in checks_replicas.compare_checksums(job)],
        "per_rank": {str(r): m for r, m in checks_straggler.straggler_metrics(job).items()},
        **({"flight_recorder_at_timeout": run.outcome["flight_recorder"]}
           if run.outcome.get("flight_recorder") else {}),
    }
    return analysis


def _job_findings(job: Job) -> list[Finding]:
    """A multi-node job assembled from several nodes' runs: say which, so the reader knows
    the findings speak for every rank."""
    if len(job.runs) < 2:
        return []
    nodes = {r: (v.first("start") or {}).get("node_rank") for r, v in job.ranks.items()}
    return [Finding(
        code="distributed.job", specialist="distributed", severity="info",
        title=f"One job over {len(job.runs)} node runs: ranks {sorted(job.ranks)} of {job.world_size}",
        detail=f"Job {job.identity}: the runs {', '.join(job.runs)} in this store recorded the same rendezvous; "
               "the checks above compare all their ranks.",
        evidence={"job": job.identity, "runs": job.runs, "ranks": sorted(job.ranks),
                  "node_of_rank": {str(r): n for r, n in nodes.items()}},
        fix="Nothing to fix: ptdiag runs on each node, sharing one --store, give one diagnosis.")]


def _flight_recorder(run: RecordedRun) -> Analysis:
    from ptdiag.specialists.distributed import flight_recorder

    folder = run.run_dir / FLIGHT_RECORDER_DIR
    if not (folder.is_dir() and flight_recorder.sniff(folder)):
        return Analysis()
    try:
        return flight_recorder.inspect(folder)
    except flight_recorder.FlightRecorderError:
        return Analysis()

"""The reproducibility specialist's part in ptdiag's own process, after the command ran.

1. repeat: the command again, for the steps the main run took (capped by
   `-o reproducibility.steps=N`, default 200; `-o reproducibility.repeat=no` skips it);
2. audit: only when the two runs differed with no generator or batch to blame, or with
   `-o reproducibility.op_audit=yes`: a third, short run under
   `torch.use_deterministic_algorithms(True, warn_only=True)` that lists the
   non-deterministic ops (it changes kernels, so it is never one of the compared runs);
3. resume: with `-o reproducibility.resume_cmd="python train.py --resume ckpt.pt"`, the
   checkpoint the main run saved at step K (`-o reproducibility.resume_step=K`, default
   its first save) is put back where the program wrote it, the resume command runs for
   the steps the main run took after K.

Companion runs write the program's files again, and a run cut short by --max-steps may
leave an older checkpoint behind; so every file the main run saved with torch.save is
moved aside first and put back afterwards (ParentContext.keeping_saved_files): the user
finds what the main run left.

What was done, or why not, goes to <run_dir>/reproducibility.json for the analysis.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.reproducibility.compare import compare
from ptdiag.events import REPRO_ROLE_ENV
from ptdiag.specialists.reproducibility.resume import STATE_FILE
from ptdiag.specialists.reproducibility.trace import AUDIT, COMPANIONS, REPEAT, RESUME, Trace



def after_run(ctx) -> None:
    options = ctx.specialist_options("reproducibility")
    main = Trace.of(RecordedRun.load(ctx.run_dir))
    record: dict = {}
    cap = options["steps"]
    steps = min(ctx.options.max_steps or main.last_step, main.last_step, cap)
    try:
        with ctx.keeping_saved_files(RecordedRun.load(ctx.run_dir)):
            if steps < 1:
                record["repeat"] = {"skipped": "the main run took no optimizer step"}
            elif options["repeat"]:
                record["repeat"] = _repeat(ctx, main, steps, options["op_audit"])
            if options["resume_cmd"]:
                record["resume"] = _resume(ctx, main, options["resume_cmd"], cap)
    finally:
        (ctx.run_dir / STATE_FILE).write_text(json.dumps(record, indent=2))


def _companion(ctx, name: str) -> Path:
    return ctx.run_dir / COMPANIONS / name


def _repeat(ctx, main: Trace, steps: int, op_audit: str) -> dict:
    outcome = ctx.run_again(ctx.command, _companion(ctx, REPEAT), max_steps=steps, env={REPRO_ROLE_ENV: REPEAT})
    done = {"steps": steps, "exit_code": outcome.exit_code}
    repeat = Trace.of(RecordedRun.load(_companion(ctx, REPEAT)))
    difference = compare(main, repeat).difference
    explained = difference is not None and (difference.stage == "weights" or difference.rng or difference.input)
    if op_audit == "yes" or (op_audit == "auto" and difference and not explained):
        audit_steps = max(difference.step, 1) if difference else steps
        audit = ctx.run_again(ctx.command, _companion(ctx, AUDIT), max_steps=audit_steps, env={REPRO_ROLE_ENV: AUDIT})
        done["audit"] = {"steps": audit_steps, "exit_code": audit.exit_code}
    return done


def _resume(ctx, main: Trace, command: str, cap: int) -> dict:
    snapshots = [c for c in main.ckpts if c.get("snapshot")]
    if not snapshots:
        return {"skipped": "the main run saved no checkpoint to a file at or after the resume step, so there was "
                           "nothing to resume from", "command": command,
                "fix": "Check that the program calls torch.save during training, and -o reproducibility.resume_step."}
    k = snapshots[0]["step"]
    steps = min(main.last_step - k, cap)
    if steps < 1:
        return {"skipped": f"the checkpoint was saved at step {k}, the run's last step: nothing follows it to "
                           "compare with", "command": command, "step": k,
                "fix": "Run more steps, or -o reproducibility.resume_step=K with a K before the end."}
    for ckpt in snapshots:
        shutil.copyfile(ckpt["snapshot"], ckpt["path"])
    outcome = ctx.run_again(shlex.split(command), _companion(ctx, RESUME), max_steps=steps, env={REPRO_ROLE_ENV: RESUME})
    return {"command": command, "step": k, "steps": steps, "exit_code": outcome.exit_code,
            "files": [c["path"] for c in snapshots]}

"""Injected by ptdiag, through PYTHONPATH, into every Python process of a diagnosed run.

It activates the probe when PTDIAG_RUN_DIR is set, then runs the sitecustomize that
would have run without ptdiag, so a user's or a distribution's own one still works. Its
directory is taken off sys.path again so the program sees the sys.path it would see
without ptdiag; PYTHONPATH itself stays, so that the processes the program starts
(torchrun workers, subprocesses) are probed too.
"""

import os
import sys


def _ptdiag_boot() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if os.environ.get("PTDIAG_RUN_DIR"):
        try:
            try:
                import ptdiag.probe as probe
            except ImportError:
                # The program runs another interpreter than ptdiag's: let it find ptdiag
                # last, after everything of its own.
                sys.path.append(os.environ["PTDIAG_SRC"])
                import ptdiag.probe as probe
            probe.activate()
        except BaseException as exc:  # ptdiag's own failure must never kill the run
            try:
                with open(os.path.join(os.environ["PTDIAG_RUN_DIR"], "probe-errors.log"), "a") as fh:
                    fh.write(f"pid {os.getpid()}: probe not activated: {exc!r}\n")
            except OSError:
                pass
    ours = sys.modules.pop("sitecustomize")
    try:
        import sitecustomize  # noqa: F401  (the next one on sys.path, if any)
    except ImportError as exc:
        # importlib expects the module it is executing to be in sys.modules afterwards
        sys.modules["sitecustomize"] = ours
        if exc.name != "sitecustomize":
            raise


_ptdiag_boot()

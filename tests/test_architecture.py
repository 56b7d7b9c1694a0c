"""The process boundary, checked on the source tree.

Everything that runs inside the user's processes lives under `ptdiag/probe/`; the
specialists under `ptdiag/specialists/` are analysis (run dir in, findings out); the two
sides meet only in neutral modules (`ptdiag/events.py`, `location.py`, ...). These tests
read the code with `ast`, so a new hook registered from an analysis module, or an
analysis import dragged into the probe, fails here rather than in a user's training.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ptdiag"
PROBE = SRC / "probe"
# the analysis side and the parent-process side: nothing here may import the probe
NOT_PROBE = ("specialists", "runs", "router", "report", "recorded.py", "series.py", "diagnose.py", "verdict.py",
             "cli.py", "cli_runs.py", "inspect.py", "entry.py", "tracking_export")
# what the probe may not import: the store, the router, the analysis side and reporting
PROBE_FORBIDDEN = ("ptdiag.runs", "ptdiag.router", "ptdiag.specialists", "ptdiag.report", "ptdiag.recorded",
                   "ptdiag.diagnose", "ptdiag.verdict", "ptdiag.cli", "ptdiag.api", "ptdiag.launch")
# calls that put ptdiag's code into torch or the user's model
HOOK_CALLS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
              "register_full_backward_pre_hook", "register_backward_hook", "register_hook",
              "register_module_forward_hook", "register_module_forward_pre_hook",
              "register_module_full_backward_hook", "register_optimizer_step_pre_hook",
              "register_optimizer_step_post_hook", "register_step_pre_hook", "register_step_post_hook",
              "register_state_dict_pre_hook", "register_load_state_dict_post_hook",
              "register_multi_grad_hook")
MODE_BASES = ("TorchDispatchMode", "TorchFunctionMode")
# inside the probe, what registers those: the owner of module and tensor hooks, which the
# plugins subscribe to, and the patches (torch's global optimizer step hooks)
HOOK_OWNERS = ("model_hooks.py", "patches.py")
# the probe's instruments own every mode and tracker it runs inside the program's calls
INSTRUMENTS = PROBE / "instruments"
# names only the instruments may touch: torch's trackers, saved-tensor hooks, the allocator's
# history, the profiler
INSTRUMENT_NAMES = ("MemTracker", "ModTracker", "saved_tensors_hooks", "_push_saved_tensors_default_hooks",
                    "_record_memory_history", "_cuda_attach_out_of_memory_observer", "_dump_snapshot")
PROFILER_MODULES = ("torch.profiler", "torch.autograd.profiler")


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _outside_probe():
    for path, tree in _modules(SRC):
        if PROBE not in path.parents:
            yield path, tree


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC))


def _hook_calls(tree: ast.AST):
    """(line, name) of each call of a HOOK_CALLS function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in HOOK_CALLS:
                yield node.lineno, name


def test_nothing_outside_the_probe_hooks_into_torch_or_the_model():
    offenders = []
    for path, tree in _outside_probe():
        offenders += [f"{_rel(path)}:{line} {name}" for line, name in _hook_calls(tree)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases}
                if bases & set(MODE_BASES):
                    offenders.append(f"{_rel(path)}:{node.lineno} class {node.name}({', '.join(sorted(bases))})")
    assert offenders == []


def test_only_the_instruments_push_modes_or_run_trackers_and_the_profiler():
    offenders = []
    for path, tree in _modules(SRC):
        if INSTRUMENTS in path.parents:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases}
                if bases & set(MODE_BASES):
                    offenders.append(f"{_rel(path)}:{node.lineno} class {node.name}")
            elif isinstance(node, (ast.Name, ast.Attribute)):
                name = node.attr if isinstance(node, ast.Attribute) else node.id
                if name in INSTRUMENT_NAMES:
                    offenders.append(f"{_rel(path)}:{node.lineno} {name}")
            elif isinstance(node, ast.ImportFrom) and node.module in PROFILER_MODULES:
                offenders += [f"{_rel(path)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                              if a.name in ("profile", "record_function")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torch.distributed._tools"):
                offenders.append(f"{_rel(path)}:{node.lineno} {node.module}")
    assert offenders == []


def test_ptdiag_runs_no_collective_and_no_process_group_of_its_own():
    """A collective of ptdiag's waits for the other ranks: in a run that hangs or whose
    ranks disagree it would hang or raise inside the program's calls, and be taken for
    the program's own. Cross-rank questions are answered by the analysis, from each
    rank's events (and only the probe imports torch.distributed)."""
    from ptdiag.events import COLLECTIVES

    offenders = [f"{_rel(path)}:{node.lineno} {node.func.attr}" for path, tree in _modules(PROBE) for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr in (*COLLECTIVES, "new_group", "new_subgroups")]
    assert offenders == []


WARNING_FILTER_CALLS = ("catch_warnings", "filterwarnings", "simplefilter", "resetwarnings", "_filters_mutated")


def test_the_probe_silences_warnings_only_through_quiet_warnings():
    """Each of these bumps the warning filters' version, which clears every module's
    warning registry: a warning the program shows once per location comes back."""
    offenders = [f"{_rel(path)}:{node.lineno} {node.func.attr}" for path, tree in _modules(PROBE)
                 if path.name != "quiet_warnings.py" for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr in WARNING_FILTER_CALLS]
    assert offenders == []


def test_inside_the_probe_only_the_owners_register_hooks():
    """Plugins subscribe to the probe's model hooks (probe.model_hooks); a hook a plugin
    registered itself would sit in the program's module (and travel with its pickle) and
    its exceptions would reach the program."""
    offenders = [f"{_rel(path)}:{line} {name}" for path, tree in _modules(PROBE)
                 if path.relative_to(PROBE).as_posix() not in HOOK_OWNERS for line, name in _hook_calls(tree)]
    assert offenders == []


def test_nothing_outside_the_probe_assigns_to_torch():
    offenders = []
    for path, tree in _outside_probe():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            for target in targets:
                root = target
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id == "torch":
                    offenders.append(f"{_rel(path)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
                first = node.args[0]
                while isinstance(first, ast.Attribute):
                    first = first.value
                if isinstance(first, ast.Name) and first.id == "torch":
                    offenders.append(f"{_rel(path)}:{node.lineno} setattr")
    assert offenders == []


@pytest.mark.parametrize("side", NOT_PROBE)
def test_the_analysis_and_parent_side_never_import_the_probe(side):
    root = SRC / side
    paths = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    offenders = [f"{_rel(p)} imports {name}" for p in paths
                 for name in _imports(ast.parse(p.read_text(encoding="utf-8")))
                 if name == "ptdiag.probe" or name.startswith("ptdiag.probe.")]
    assert offenders == []


def test_the_probe_imports_neither_store_router_nor_analysis():
    offenders = [f"{_rel(p)} imports {name}" for p, tree in _modules(PROBE) for name in _imports(tree)
                 if name.startswith(PROBE_FORBIDDEN)]
    assert offenders == []


def test_renderers_read_only_the_report():
    offenders = [f"{_rel(p)} imports {name}" for p, tree in _modules(SRC / "report") for name in _imports(tree)
                 if name.startswith(("ptdiag.recorded", "ptdiag.runs", "ptdiag.specialists"))]
    assert offenders == []


def test_importing_the_probe_and_every_plugin_imports_no_torch_and_no_analysis():
    """The probe is imported at interpreter start (sitecustomize); torch comes only when
    the program imports it, and the analysis side never comes."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import ptdiag.probe, ptdiag.probe.core, ptdiag.probe.plugins\n"
        "for m in pkgutil.iter_modules(ptdiag.probe.plugins.__path__):\n"
        "    importlib.import_module('ptdiag.probe.plugins.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'torch' or n.startswith(('ptdiag.specialists', 'ptdiag.runs',"
        " 'ptdiag.router', 'ptdiag.report', 'ptdiag.recorded', 'typer', 'rich')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

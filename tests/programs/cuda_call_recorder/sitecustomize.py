"""Records every call that initialises CUDA or asks the driver, from the moment torch.cuda
exists: put on PYTHONPATH (after ptdiag's injected directory, whose sitecustomize runs this
one next), it wraps torch's functions as `torch.cuda` finishes importing, before `import
torch` returns and before the probe's `on_torch_import` runs. Each call is appended to
$CUDA_CALLS_LOG as it happens (`{"call": name, "from": first frame outside torch}`: the
probe's exit work runs after this module's atexit), and at exit a line with the number of
calls queued for CUDA's initialisation (`torch.cuda._lazy_call`) and whether CUDA was
initialised. tests/test_gpu_paths.py compares a run under the probe with a bare one.
"""

import atexit
import importlib.abc
import json
import os
import sys

# module -> functions that initialise CUDA (cuInit, a context) or poison fork when called
WATCHED = {
    "torch._C": ("_cuda_getDeviceCount", "_cuda_init", "_cuda_getDevice", "_cuda_setDevice",
                 "_cuda_record_memory_history", "_cuda_attach_out_of_memory_observer", "_cuda_memoryStats",
                 "_cuda_set_sync_debug_mode"),
    "torch.cuda": ("_lazy_init", "init", "current_device", "is_available", "is_bf16_supported",
                   "get_device_properties", "set_sync_debug_mode", "synchronize"),
    "torch.cuda.memory": ("_lazy_init",),
    "torch.cuda.random": ("_lazy_init",),
}


def _log(record):
    with open(os.environ["CUDA_CALLS_LOG"], "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _where():
    frame = sys._getframe(2)
    while frame is not None and (os.sep + "torch" + os.sep) in frame.f_code.co_filename:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else None


def _wrap(module, name):
    original = getattr(module, name, None)
    if original is None:
        return

    def recorded(*args, **kwargs):
        _log({"call": f"{module.__name__}.{name}", "from": _where()})
        return original(*args, **kwargs)

    setattr(module, name, recorded)


def _patch():
    for module_name, names in WATCHED.items():
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            _wrap(module, name)


def _at_exit():
    cuda = sys.modules.get("torch.cuda")
    _log({"queued": len(cuda._queued_calls) if cuda is not None else None,
          "initialized": cuda._initialized if cuda is not None else None})


class _AfterTorchCuda(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.cuda":
            return None
        sys.meta_path.remove(self)
        spec = next((s for s in (getattr(f, "find_spec", lambda *a: None)(fullname, path, target)
                                 for f in sys.meta_path) if s is not None), None)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            _patch()

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("CUDA_CALLS_LOG"):
    sys.meta_path.insert(0, _AfterTorchCuda())
    atexit.register(_at_exit)

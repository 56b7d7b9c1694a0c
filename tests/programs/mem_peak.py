"""Measure the real host-memory peak of two training steps of a small conv net at one batch size.

    python mem_peak.py BATCH...   -> prints one peak in bytes per batch (parameters included)

The process's peak RSS (VmHWM) is reset just before the steps (/proc/self/clear_refs,
Linux) after a warm-up on a copy of the model, so library code pages and one-time
caches are not counted; run it with MALLOC_MMAP_THRESHOLD_ low so freed tensors leave
the RSS instead of staying cached by the C allocator. The estimate under test counts
the same things: parameters, gradients, optimizer state, activations, temporaries.
"""

import copy
import sys

import torch

import mem_model


def status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(batch: int) -> int:
    """A fresh model and optimizer each time: state from another batch size is freed first."""
    model, optimizer = mem_model.build()
    warm_model = copy.deepcopy(model)
    warm_opt = type(optimizer)(warm_model.parameters(), **optimizer.defaults)
    mem_model.train_step(warm_model, warm_opt, *mem_model.batch(2))
    del warm_model, warm_opt
    x, y = mem_model.batch(batch)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    for _ in range(2):
        mem_model.train_step(model, optimizer, x, y)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return status("VmHWM") - before + params


def main() -> None:
    torch.set_num_threads(1)
    for batch in sys.argv[1:]:
        print(measure(int(batch)))


if __name__ == "__main__":
    main()

"""Are the replicas still replicas? Each rank records checksums of its parameters and
buffers; the analysis compares the ranks afterwards.

DDP keeps the ranks' weights identical by construction; when they differ after
synchronised steps, something on one rank changed them (a learning rate or scheduler
stepped on one rank only, `no_sync` around every micro-batch, weights edited outside
the optimizer, buffers not broadcast). The checksums are taken inside the wrapped
module's forward, after DDP broadcast the buffers and before the forward changes them,
at steps 1, 2, 4, 8, ... : a handful per run.

Nothing is exchanged between ranks while the program runs: a collective of ptdiag's
would wait for the other ranks, so in a run that hangs or whose ranks disagree it
would hang or raise inside the program's forward, and it would pair up with the
program's own collectives on a shared group. Each rank writes its numbers to its own
event log (`dist_checksums`); the analysis lines the ranks up by step.
"""

from __future__ import annotations


def is_check_step(step: int) -> bool:
    return step > 0 and step & (step - 1) == 0


class Checksums:
    """The checksums of one module's parameters and buffers, in a fixed order."""

    def __init__(self, module) -> None:
        self.module = module
        self.tensors = [["param", n] for n, _ in module.named_parameters()]
        self.tensors += [["buffer", n] for n, _ in module.named_buffers()]

    def take(self, step: int, first: bool) -> dict:
        """`dist_checksums` fields: float64 sum and norm per tensor (one device-to-host
        copy), and the tensors' names on the first check of the run."""
        import torch

        tensors = [t for _, t in self.module.named_parameters()] + [t for _, t in self.module.named_buffers()]
        values = []
        if tensors:
            with torch.no_grad():
                stats = torch.stack([s for t in tensors for s in (t.detach().double().sum(), t.detach().double().norm())])
            values = stats.view(-1, 2).cpu().tolist()
        return {"step": step, "sums": [v[0] for v in values], "norms": [v[1] for v in values],
                "tensors": self.tensors if first else None}

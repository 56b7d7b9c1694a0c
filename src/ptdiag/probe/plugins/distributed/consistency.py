"""Are the replicas still replicas? Checksums of every parameter and buffer, all-gathered.

DDP keeps the ranks' weights identical by construction; when they differ after
synchronised steps, something on one rank changed them (a learning rate or scheduler
stepped on one rank only, `no_sync` around every micro-batch, weights edited outside
the optimizer, buffers not broadcast). The check runs inside the wrapped module's
forward, after DDP broadcast the buffers and before the forward changes them, at steps
1, 2, 4, 8, ... : a handful of checks per run.

It uses a process group of its own (gloo, CPU tensors, created right after
init_process_group, when every rank is there), so its all-gathers can never pair up
with the program's collectives, even in a run where ranks disagree on those.
"""

from __future__ import annotations

import datetime

SIDE_GROUP_TIMEOUT_S = 60
MAX_DIFFERING_REPORTED = 10
RELATIVE_TOLERANCE = 1e-7  # double sums of identical tensors agree far closer than this


def is_check_step(step: int) -> bool:
    return step > 0 and step & (step - 1) == 0


class ConsistencyCheck:
    def __init__(self, dist) -> None:
        self.dist = dist
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SIDE_GROUP_TIMEOUT_S))
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()

    def run(self, module, step: int) -> dict | None:
        """All ranks call this at the same forward; rank 0 returns the comparison."""
        import torch

        named = [("param", n, t) for n, t in module.named_parameters()]
        named += [("buffer", n, t) for n, t in module.named_buffers()]
        with torch.no_grad():
            stats = torch.stack([s for _, _, t in named
                                 for s in (t.detach().double().sum(), t.detach().double().norm())]).cpu()
        gathered = [torch.empty_like(stats) for _ in range(self.world)]
        self.dist.all_gather(gathered, stats, group=self.group)
        if self.rank != 0:
            return None
        table = torch.stack(gathered).view(self.world, len(named), 2)
        spread = (table - table[0]).abs().amax(dim=(0, 2))
        scale = table[0].abs().amax(dim=1).clamp_min(1e-30)
        differ = (spread > RELATIVE_TOLERANCE * scale).nonzero().flatten().tolist()
        return {
            "step": step, "checked": len(named), "n_differing": len(differ),
            "differing": [{"kind": named[i][0], "name": named[i][1],
                           "sum_per_rank": table[:, i, 0].tolist(),
                           "relative_spread": float(spread[i] / scale[i])}
                          for i in differ[:MAX_DIFFERING_REPORTED]],
        }

"""Check 4 of scripts/gpu_check.py: the losses ptdiag records must equal the program's
own `loss.item()` bit for bit, also when the stream current as the optimizer step ends is
an idle side stream, not the one that computed the loss. Prints `LOSS <step> <repr>`.

    python stream_losses.py default | side
"""

import sys

import torch
from torch import nn


class MarkStep(torch.optim.Optimizer):
    """The program updates its weights itself, on the loss's stream; this optimizer's step
    only marks the step's end (ptdiag counts steps by optimizer steps)."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 1)).cuda()
marker = MarkStep(model.parameters())
side = torch.cuda.Stream()  # never given work: whatever is queued on it runs at once
weight = torch.randn(4096, 4096, device="cuda") / 64
for step in range(1, 9):
    x = torch.randn(256, 4096, device="cuda")
    for _ in range(20):  # queue enough work that the loss is computed well after the host moves on
        x = torch.tanh(x @ weight)
    loss = model(x[:, :2048]).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-4 * p.grad
            p.grad = None
    if sys.argv[1] == "side":
        with torch.cuda.stream(side):
            marker.step()
    else:
        marker.step()
    print("LOSS", step, repr(loss.item()), flush=True)

"""Check 2 of scripts/gpu_check.py: a CUDA out-of-memory in backward, with cuDNN's
benchmark on (its algorithm search may hit OOMs torch catches itself) and a memory
fraction of a few percent. The failing allocation is the program's own, of a size it
prints: `REQUEST <bytes>`, made at the line marked below.
"""

import torch
from torch import nn

FRACTION = 0.03
torch.backends.cudnn.benchmark = True
torch.cuda.set_per_process_memory_fraction(FRACTION)
BUDGET = int(torch.cuda.get_device_properties(0).total_memory * FRACTION)
REQUEST = (BUDGET // (2 << 20) + 1) * (2 << 20)  # more than the whole budget: it fails wherever it lands


class Scratch(torch.autograd.Function):
    """Identity forward (on the model's output, so backward reaches it first); its backward
    needs a scratch buffer larger than the budget."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        scratch = torch.empty(REQUEST, dtype=torch.uint8, device=grad.device)  # OOM_LINE: the failing allocation
        return grad + scratch[:1].float().mul(0)


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.ReLU(), nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
print("REQUEST", REQUEST, flush=True)
for step in range(3):
    x = torch.randn(64, 3, 128, 128, device="cuda")
    out = model(x)
    loss = (Scratch.apply(out) if step == 2 else out).logsumexp(1).mean()  # the third backward fails
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("no OOM")

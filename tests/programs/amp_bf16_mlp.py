"""A wide MLP trained for a few steps on CPU, its forward under bfloat16 autocast unless
`--fp32`: the activations it keeps for backward are 16-bit, which an estimate of its
memory must count as such. Prints the loss of each step."""

import argparse

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--fp32", action="store_true")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
for _ in range(args.steps):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    print(f"loss {loss.item():.4f}", flush=True)

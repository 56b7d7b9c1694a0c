"""A model of many small parameter tensors (24 Linear + LayerNorm blocks: 96 tensors) trained
with Adam on a CPU at a small batch: torch's default there is the per-parameter (for-loop)
Adam, so the optimizer's step is a large share of each step.

    python optimizer_loop.py [--steps 60] [--foreach]
"""
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--foreach", action="store_true", help="build Adam with foreach=True (the fix)")
args = parser.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(*(layer for _ in range(24) for layer in (torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))))
opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"foreach": True} if args.foreach else {}))
x, y = torch.randn(2, 8), torch.randn(2, 8)
for step in range(args.steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"last loss {loss.item():.4f}")

"""Curve fitting with LBFGS, whose step() evaluates a closure (forward and backward)
several times per step; the loss `step()` returns is the closure's first. The shape of
pytorch/examples' time_sequence_prediction and of physics-informed fits.

Expected: --steps LBFGS steps; each step's loss is the one at its start.
"""

import argparse

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--lr", type=float, default=0.5)
parser.add_argument("--max_iter", type=int, default=8)
args = parser.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)

x = torch.linspace(-2, 2, 64).unsqueeze(1)
y = torch.sin(2 * x) + 0.3 * x
model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
optimizer = torch.optim.LBFGS(model.parameters(), lr=args.lr, max_iter=args.max_iter)
criterion = nn.MSELoss()

for i in range(args.steps):
    def closure():
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    print(f"step {i}: loss {loss.item():.6f}")

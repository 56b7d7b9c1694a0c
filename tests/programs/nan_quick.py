"""A linear regression whose learning rate is far too high: the loss overflows to inf/NaN
within ten steps (step 9)."""
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=100.0)
parser.add_argument("--api-key", default="")
args = parser.parse_args()
torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=args.lr)
x, y = torch.randn(64, 8), torch.randn(64, 1)
for step in range(40):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

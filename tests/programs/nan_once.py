"""A block whose forward is not repeatable: it turns its output into NaN on its third call
only (state kept in the module), so a replay of that step stays finite."""

import torch
from torch import nn


class Flaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        self.calls += 1
        h = self.linear(x)
        return h * float("nan") if self.calls == 3 else h


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), Flaky(), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 8), torch.randn(16, 1)
for step in range(6):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

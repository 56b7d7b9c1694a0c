"""A model wrapped by torch.compile (the eager backend: no compiler needed); prints its
losses and warns nothing of its own. With `nan`: its last layer takes log(softmax(1000x)),
and log(0) = -inf at the first step."""

import sys

import torch


class LogHead(torch.nn.Module):
    def forward(self, x):
        return torch.log(torch.softmax(x * 1000, dim=1))


torch.manual_seed(0)
layers = [torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)]
if "nan" in sys.argv:
    layers += [LogHead()]
model = torch.compile(torch.nn.Sequential(*layers), backend="eager")
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 8), torch.randn(32, 3)
for step in range(4):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.5f}", flush=True)

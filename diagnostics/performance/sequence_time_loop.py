"""A hand-written recurrent cell stepped in Python over every time step, with a tiny
hidden size: hundreds of small ops per batch.

Expected: performance.launch_bound at the loop line.
"""

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)


class Cell(nn.Module):
    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.ih, self.hh = nn.Linear(inputs, hidden), nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hh.in_features)
        for t in range(x.shape[1]):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.head(h)


model = Cell(8, 16)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(60):
    x, y = torch.randn(16, 100, 8), torch.randint(0, 2, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

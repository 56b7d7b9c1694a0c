"""A small MLP trainer that keeps a metrics history for plotting at the end.

The bug: `history["loss"].append(loss)` stores the loss tensor, graph and all, in a dict
of lists defined at module level; nothing in the loop body looks wrong.
Expected: memory.leak, holder `history`, at the append line.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
history = {"loss": []}

for step in range(12):
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history["loss"].append(loss)

print("final loss", float(history["loss"][-1]))

"""Check 2 of scripts/gpu_check.py: a plain training whose step peak is known. Prints
`PEAK <bytes>`: torch.cuda.max_memory_allocated() over its steps, which ptdiag's
"will it fit" estimate (`-o memory.target_memory=...`) should come within 25 % of.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128 * 16, 1000), nn.ReLU(),
                      nn.Linear(1000, 10)).cuda()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
data = TensorDataset(torch.randn(4 * 64, 3, 64, 64), torch.randint(0, 10, (4 * 64,)))
for x, y in DataLoader(data, batch_size=64):
    loss = nn.functional.cross_entropy(model(x.cuda()), y.cuda())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("PEAK", torch.cuda.max_memory_allocated(), flush=True)

"""Seeds that look deliberate but change every run: torch from a fixed value, numpy from
the process id (a common "different seed per worker" idea applied in the main
process). Numpy noise augmentation then differs between two runs of the same command.
"""
import os

import numpy as np
import torch

torch.manual_seed(0)
np.random.seed(os.getpid() % 2**32)
torch.set_num_threads(1)
model = torch.nn.Linear(6, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(64, 6), torch.randn(64, 1)
for step in range(6):
    noisy = x + torch.from_numpy(np.random.normal(0, 0.1, x.shape).astype("float32"))
    loss = torch.nn.functional.mse_loss(model(noisy), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("loss", loss.item())

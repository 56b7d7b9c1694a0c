"""Trains two steps, then blocks forever (a deadlock stand-in)."""
import threading

import torch

model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(2):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print("WAITING", flush=True)
threading.Event().wait()

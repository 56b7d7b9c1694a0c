"""A tiny training loop that steps until stopped, printing a marker once it trains."""
import sys
import time

import torch

model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
while True:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step == 3:
        print("TRAINING", flush=True)
    time.sleep(0.01)

"""Trains three steps, then fails the way a shape bug does."""
import torch

model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(10):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 2:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x5 and 4x2)")

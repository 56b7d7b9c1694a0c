"""Runs a model forward but never steps an optimizer (an evaluation script)."""
import torch

model = torch.nn.Linear(4, 2)
with torch.no_grad():
    print(model(torch.randn(3, 4)).shape)

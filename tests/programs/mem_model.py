"""A small conv net whose activations grow with the batch: the fit estimate's test subject."""

import torch
import torch.nn.functional as F
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16 * 16, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def batch(n: int):
    return torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))


def train_step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

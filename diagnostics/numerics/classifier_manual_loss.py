"""An MLP classifier trained with a hand-written, class-balanced loss outside the model:
the mean loss of each class, averaged over the classes. A batch that misses a class
divides that class's zero loss sum by its zero count: 0/0 = NaN.

    python classifier_manual_loss.py --steps 40
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 5


def balanced_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    sums = torch.zeros(CLASSES).index_add(0, labels, per_sample)
    per_class = sums / torch.bincount(labels, minlength=CLASSES)
    return per_class.mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(1024, 20)
    y = torch.randint(0, CLASSES, (1024,))
    for step in range(args.steps):
        index = torch.randint(0, 1024, (args.batch_size,))
        loss = balanced_loss(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()

"""A regressor of positive targets that pools its hidden units by the log of their mean,
in groups of two, with dropout before the pooling. Softplus keeps every unit positive,
but dropout zeroes both units of a group now and then (p**2 = 9 % of the rows at p=0.3):
the group's mean is 0 and its log is -inf, in whichever step dropout draws that mask.

Whether a step fails depends on its dropout draws only, so a replay of the step finds
the op only when it draws the step's own numbers.

    python dropout_log_pool.py --steps 30
    python dropout_log_pool.py --steps 30 --dropout 0   # correct: nothing is ever zeroed
"""

import argparse

import torch
from torch import nn


class LogMeanPool(nn.Module):
    """log of the mean of each group of `size` units: a soft maximum over the group."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        groups = h.view(h.shape[0], -1, self.size)
        return torch.log(groups.mean(dim=-1))


class Regressor(nn.Module):
    def __init__(self, features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.drop = nn.Dropout(dropout)
        self.pool = LogMeanPool(2)
        self.head = nn.Linear(hidden // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(nn.functional.softplus(self.hidden(x)))
        return self.head(self.pool(h)).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x = torch.randn(256, 8)
    y = x[:, :2].abs().sum(dim=1)
    model = Regressor(8, 4, args.dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(x), (args.batch_size,))
        loss = nn.functional.mse_loss(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()

"""A loop that builds a new optimizer every step (a common bug: optimizer state is lost),
with a DataLoader: every step's optimizer is a new object, garbage once the step is over.

    python budget_optimizer_rebuilt.py [--steps N] [--times FILE]
"""
import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _measure import StepTimes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--times")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(args.steps * 16, 32), torch.randint(0, 4, (args.steps * 16,)))
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    times = StepTimes(args.times)
    for inputs, labels in DataLoader(data, batch_size=16):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # the bug: built inside the loop
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.tick()
    print("done")


if __name__ == "__main__":
    main()

"""A training loop that waits on its DataLoader: every sample takes a fixed sleep to
"read" (a slow disk or network) and the loader has no workers, so the step waits for
loading it could overlap with compute. With num_workers >= 2 the sleeps overlap with the
training step and the wait mostly disappears.

    python sleepy_loader.py [--steps N] [--sleep-ms MS] [--batch-size B]
"""
import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class SlowReads(Dataset):
    def __init__(self, count: int, sleep_s: float) -> None:
        self.count, self.sleep_s = count, sleep_s

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        time.sleep(self.sleep_s)
        generator = torch.Generator().manual_seed(index)
        return torch.randn(256, generator=generator), index % 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sleep-ms", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = DataLoader(SlowReads(args.steps * args.batch_size, args.sleep_ms / 1000), batch_size=args.batch_size)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for inputs, labels in loader:
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print("done")


if __name__ == "__main__":
    main()

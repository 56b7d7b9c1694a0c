"""A healthy compute-bound loop: a wide MLP on precomputed feature vectors, the Dataset
returning one row per __getitem__ (a few torch calls per sample, 128 samples a batch, so
hundreds of calls per step from that one line), and matmuls filling the step. Nothing here
is slow for a reason a change in the loop would fix: the verdict is compute-bound, with no
advice to vectorise the Dataset.

    python features_matmul_healthy.py [--steps 14] [--threads N]
"""
import argparse

import torch
from torch.utils.data import DataLoader, Dataset


class Features(Dataset):
    def __init__(self, n: int, dim: int):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=generator)
        self.y = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loader = DataLoader(Features(4096, 512), batch_size=128, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1536), torch.nn.ReLU(), torch.nn.Linear(1536, 1536),
                                torch.nn.ReLU(), torch.nn.Linear(1536, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = 0
    while step < args.steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
    print(f"done: {step} steps, loss {loss.item():.3f}")


if __name__ == "__main__":
    main()

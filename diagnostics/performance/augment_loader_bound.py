"""A data-bound loop: each sample is synthesised and augmented in Python (a jittered
signal built value by value, then normalised), the model is small, and the DataLoader
has no workers, so the step waits on loading. `--workers N` is the knob the advice turns.

    python augment_loader_bound.py [--steps 14] [--workers 0]
"""
import argparse
import math
import random

import torch
from torch.utils.data import DataLoader, Dataset

LENGTH = 256


class JitteredSignals(Dataset):
    def __len__(self):
        return 2048

    def __getitem__(self, i):
        rng = random.Random(i)
        phase, freq = rng.random() * math.tau, 1 + rng.random() * 4
        values = [math.sin(phase + freq * t / LENGTH * math.tau) + rng.gauss(0, 0.1) for t in range(LENGTH)]
        mean = sum(values) / LENGTH
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / LENGTH) or 1.0
        signal = torch.tensor([(v - mean) / spread for v in values])
        return signal, int(freq)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = DataLoader(JitteredSignals(), batch_size=32, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    model = torch.nn.Sequential(torch.nn.Linear(LENGTH, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = 0
    while step < args.steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
    print(f"done: {step} steps, loss {loss.item():.3f}")


if __name__ == "__main__":
    main()

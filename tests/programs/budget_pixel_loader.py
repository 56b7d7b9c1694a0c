"""A DataLoader whose transform loops over pixels in Python, in the training process
(num_workers=0): each batch is hundreds of thousands of Python calls. Under "training is
slow" a profiler window with Python stacks records every one of them.

    python budget_pixel_loader.py [--steps N] [--size PIXELS] [--times FILE]
"""
import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parent))
from _measure import StepTimes  # noqa: E402


class BrightenedImages(Dataset):
    """Random images brightened pixel by pixel in Python: min/max calls per pixel."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        image = torch.rand(3, self.size, self.size, generator=generator).tolist()
        brightened = [[[min(1.0, max(0.0, v * 1.2 - 0.1)) for v in row] for row in channel] for channel in image]
        return torch.tensor(brightened), index % 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--times")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = DataLoader(BrightenedImages(args.steps * args.batch_size, args.size), batch_size=args.batch_size,
                        num_workers=0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = StepTimes(args.times)
    for images, labels in loader:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.tick()
    print("done")


if __name__ == "__main__":
    main()

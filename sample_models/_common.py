"""What every sample model shares: arguments, the FakeData loader, ResNet, the loop.

Each `resnet_*.py` script reproduces one family of symptoms through `--bug`; the
healthy baseline is `resnet_healthy.py`. FakeData downloads nothing, so the samples run
anywhere; `--device cuda` runs them on a GPU.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms


def parser(description: str, bugs: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--samples", type=int, default=256, help="FakeData size (one epoch)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    if bugs:
        p.add_argument("--bug", choices=bugs, default=None, help="the symptom to reproduce")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return torch.device(args.device)


def fake_data(args, transform=None) -> torchvision.datasets.FakeData:
    return torchvision.datasets.FakeData(
        size=args.samples, image_size=(3, args.image_size, args.image_size),
        num_classes=args.num_classes, transform=transform or transforms.ToTensor(),
        random_offset=args.seed)


def loader(args, dataset, **kwargs) -> DataLoader:
    generator = torch.Generator().manual_seed(args.seed)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                      num_workers=args.workers, generator=generator, **kwargs)


def resnet(args) -> torch.nn.Module:
    return getattr(torchvision.models, args.arch)(num_classes=args.num_classes)


def sgd(args, model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)

"""A small classifier whose loss goes NaN for one of several causes, each a flag, so that
the fix of each candidate cause can be tried on it (verification runs).

    --poison I       sample I of the dataset is NaN (a corrupt record)
    --amp float16    the forward under CPU autocast in float16 (no GradScaler)
    --input-scale S  inputs multiplied by S (raw sensor units: beyond float16's 65504 at 1e5)
    --lr LR          SGD's learning rate (100 explodes within a few steps)
"""

import argparse

import torch
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--poison", type=int, default=None)
parser.add_argument("--amp", choices=["float16", "bfloat16"], default=None)
parser.add_argument("--input-scale", type=float, default=1.0)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()


class Records(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(96, 16, generator=g) * args.input_scale
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if i == args.poison:
            x = torch.full_like(x, float("nan"))
        return x, self.y[i]


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
loader = DataLoader(Records(), batch_size=8, shuffle=True)
dtype = getattr(torch, args.amp) if args.amp else None
for epoch in range(args.epochs):
    for x, y in loader:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}", flush=True)

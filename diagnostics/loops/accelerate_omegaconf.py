"""A regression loop under Hugging Face Accelerate, configured by a dataclass schema
merged with OmegaConf dot-list overrides from the command line
(`python accelerate_omegaconf.py optim.lr=0.01 train.accumulate=4`), as Hydra-style
projects do: `accelerator.prepare`, `accelerator.accumulate(model)` for gradient
accumulation, `accelerator.backward(loss)`, an OneCycle schedule stepped per update,
and an evaluation pass with `accelerator.gather` every epoch.

Expected: train.epochs * batches / train.accumulate optimizer steps (2 * 8 / 2 = 8);
`optim.lr`, `train.accumulate`, `model.hidden` recorded; `optimizer.lr` the configured
LR, not OneCycle's first value.
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from accelerate import Accelerator
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class ModelConfig:
    hidden: int = 16
    depth: int = 2


@dataclass
class OptimConfig:
    lr: float = 0.02
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16
    accumulate: int = 2
    seed: int = 3


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build(cfg):
    layers, width = [], 4
    for _ in range(cfg.model.depth):
        layers += [nn.Linear(width, cfg.model.hidden), nn.ReLU()]
        width = cfg.model.hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


def main(cfg):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=cfg.train.accumulate)
    torch.manual_seed(cfg.train.seed)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(256, 1)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=cfg.train.batch_size * 2, shuffle=True)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    model = build(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    updates = cfg.train.epochs * len(train) // cfg.train.accumulate
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=updates)
    model, optimizer, train, val, scheduler = accelerator.prepare(model, optimizer, train, val, scheduler)
    for epoch in range(cfg.train.epochs):
        model.train()
        for xb, yb in train:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        model.eval()
        errors = []
        with torch.no_grad():
            for xb, yb in val:
                errors.append(accelerator.gather(nn.functional.mse_loss(model(xb), yb, reduction="none")))
        accelerator.print(f"epoch {epoch}: val mse {torch.cat(errors).mean().item():.4f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    config = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(sys.argv[1:]))
    main(config)

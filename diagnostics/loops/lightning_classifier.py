"""A LightningModule trained by `Trainer.fit`: hyperparameters kept with
`save_hyperparameters()`, the optimizer and a step-wise LR scheduler from
`configure_optimizers`, a validation loop between training batches. Lightning calls
`optimizer.step(closure)`: the closure runs the training step and its backward inside the
step.

Expected: --max_steps optimizer steps; `learning_rate` and `hidden` recorded from hparams;
`optimizer.lr` the configured LR, not the schedule's value at step 1.
"""

import argparse
import logging
import warnings

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import pytorch_lightning as pl


class Classifier(pl.LightningModule):
    def __init__(self, hidden: int = 16, learning_rate: float = 0.05, warmup_steps: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=0.9)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    torch.set_num_threads(1)
    pl.seed_everything(11, verbose=False)
    model = Classifier(learning_rate=args.learning_rate)
    trainer = pl.Trainer(max_steps=args.max_steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         val_check_interval=4, limit_val_batches=2)
    trainer.fit(model, DataLoader(data(256, 0), batch_size=16, shuffle=True), DataLoader(data(64, 1), batch_size=32))
    print(f"trained {trainer.global_step} steps")

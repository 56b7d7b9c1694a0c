"""Logs its loss to TensorBoard; with --hparams also its hyperparameters."""
import argparse
import tempfile

import torch
from torch.utils.tensorboard import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--hparams", action="store_true")
args = parser.parse_args()
writer = SummaryWriter(tempfile.mkdtemp())
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=args.lr)
for step in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    writer.add_scalar("train/loss", loss.item(), step)
if args.hparams:
    writer.add_hparams({"lr": args.lr}, {"final_loss": loss.item()})
writer.close()

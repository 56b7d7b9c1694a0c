"""Logs its loss to TensorBoard (the loss tensor itself, as many scripts do), prints it and
logs a line to stderr at each step; with --hparams also its hyperparameters. Seeded, with
no timings: its streams are the same run after run."""
import argparse
import logging
import tempfile

import torch
from torch.utils.tensorboard import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--hparams", action="store_true")
args = parser.parse_args()
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("tb_logging")
torch.manual_seed(0)
writer = SummaryWriter(tempfile.mkdtemp())
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=args.lr)
for step in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    writer.add_scalar("train/loss", loss, step)
    print(f"step {step} loss {loss.item():.6f}")
    log.warning("step %d logged", step)
if args.hparams:
    writer.add_hparams({"lr": args.lr}, {"final_loss": loss.item()})
writer.close()

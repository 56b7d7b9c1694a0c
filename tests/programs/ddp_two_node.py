"""Tiny DDP training without a DistributedSampler, for a two-node job simulated with two
torchrun invocations on one machine (--nnodes 2, c10d rendezvous on 127.0.0.1)."""
import gc
import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
model = DDP(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(args.epochs):
    for x, y in loader:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

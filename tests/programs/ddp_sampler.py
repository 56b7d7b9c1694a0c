"""A tiny DDP training on gloo (CPU) over a 32-sample data set, for torchrun with 2 ranks;
`--bug` picks the data mistake: `no_sampler` (a shuffled DataLoader seeded alike on every
rank: the ranks read the same batches), `no_set_epoch` (a DistributedSampler whose
set_epoch is never called: each epoch replays the first one's order), `none`."""
import gc
import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--bug", choices=("no_sampler", "no_set_epoch", "none"), default="none")
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.arange(32, dtype=torch.float32).unsqueeze(1).repeat(1, 4), torch.randn(32, 1))
if args.bug == "no_sampler":
    loader = DataLoader(data, batch_size=4, shuffle=True)
    sampler = None
else:
    sampler = DistributedSampler(data, shuffle=True)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
model = DDP(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-4)
for epoch in range(args.epochs):
    if sampler is not None and args.bug != "no_set_epoch":
        sampler.set_epoch(epoch)
    for x, y in loader:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

"""DDP on gloo with two rank-dependent mistakes: only rank 0 steps the LR scheduler (the
replicas drift apart), and rank 1 does slow extra work every step (a straggler)."""
import gc
import argparse
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--slow-s", type=float, default=0.05)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)  # each rank its own data; DDP broadcasts rank 0's weights
model = DDP(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
for step in range(args.steps):
    if rank == 1:
        time.sleep(args.slow_s)  # e.g. a synchronous logger on this rank only
    loss = model(torch.randn(8, 16)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if rank == 0:
        scheduler.step()
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

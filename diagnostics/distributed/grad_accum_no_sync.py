"""Gradient accumulation written with DDP's no_sync() around *every* micro-batch, the last
one included: gradients are never all-reduced, each rank steps with its own gradients,
and the replicas drift apart from the first optimizer step. (Correct: no_sync() on all
but the last micro-batch.)"""
import gc
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

ACCUMULATE = 4
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(8):
    for micro in range(ACCUMULATE):
        sync = model.no_sync()  # bug: the last micro-batch must run without it, so DDP all-reduces
        with sync:
            x, y = torch.randn(16, 32), torch.randn(16, 1)
            loss = (model(x) - y).pow(2).mean() / ACCUMULATE
            loss.backward()
    opt.step()
    opt.zero_grad()
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

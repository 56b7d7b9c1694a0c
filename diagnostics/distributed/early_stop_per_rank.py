"""Early stopping decided from each rank's *local* validation loss: rank 0 stops and
waits at the final barrier while rank 1 keeps training and waits in DDP's gradient
all-reduce. Nobody raises; the job hangs. (Correct: all-reduce the stop decision.)"""
import gc
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
model = DDP(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
best, patience = float("inf"), 0
for epoch in range(100):
    for _ in range(4):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = float(model.module(torch.randn(64, 8)).pow(2).mean()) + (10.0 * epoch if rank == 0 else -1.0 * epoch)
    if val < best:
        best, patience = val, 0
    else:
        patience += 1
    if patience >= 2:  # bug: a local decision; the ranks disagree on when to stop
        break
dist.barrier()
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

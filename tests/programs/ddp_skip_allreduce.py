"""DDP on gloo where rank 1 skips the metric all_reduce after step 2 and blocks in the
next step's DDP broadcast: a real hang (default process-group time-out of 30 min)."""
import gc
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)  # each rank its own data; DDP broadcasts rank 0's weights
model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(1, 1000):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 2 and rank == 0:
        dist.all_reduce(loss.detach())  # only rank 0 gets here: rank 1 never joins
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

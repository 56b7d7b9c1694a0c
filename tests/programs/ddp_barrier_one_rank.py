"""DDP on gloo where rank 0 alone calls a barrier after step 4: rank 1 goes on training
(a model without buffers: DDP's forward sends nothing) and waits in the next backward's
gradient all-reduce, rank 0 waits in the barrier. A real hang (the default process-group
time-out is 30 min)."""
import gc
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(1, 1000):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 4 and rank == 0:
        dist.barrier()  # only rank 0 gets here
print(f"rank {rank} done", flush=True)
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

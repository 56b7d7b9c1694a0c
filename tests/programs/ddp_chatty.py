"""A DDP training on gloo (CPU) for torchrun with two ranks that talks as real scripts do:
rank 0 prints its loss each epoch, logs to stderr and iterates a DataLoader with
pin_memory=True, whose warning (no accelerator here) torch shows once per location.
Only rank 0 writes, so its streams are the same run after run."""
import gc
import logging

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

dist.init_process_group("gloo")
rank = dist.get_rank()
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("ddp_chatty")
torch.manual_seed(0)
data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = DataLoader(data, batch_size=8, pin_memory=rank == 0)
model = DDP(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(3):
    for x, y in loader:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        print(f"epoch {epoch} loss {loss.item():.6f}", flush=True)
        log.warning("epoch %d done", epoch)
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()

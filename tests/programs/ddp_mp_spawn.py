"""A tiny DDP training on gloo started the tutorial way: torch.multiprocessing.spawn, no
torchrun; the ranks pass their rank to init_process_group themselves. Rank 1 feeds a
DataLoader with a worker process (a spawned child that never starts a process group)."""

import gc
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset


def train(rank: int, world_size: int, store_file: str, steps: int) -> None:
    # a file rendezvous: a port picked free and released can be taken by another test's
    # process before the ranks bind it (seen once on CI's loaded box)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = DataLoader(TensorDataset(torch.randn(8 * steps, 4)), batch_size=8,
                      num_workers=1 if rank == 1 else 0, multiprocessing_context="spawn" if rank == 1 else None)
    for (x,) in data:
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"rank {rank} done", flush=True)
    gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
    dist.destroy_process_group()


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(train, args=(2, os.path.join(folder, "rendezvous"), steps), nprocs=2)

"""A Trainer class in the style of the DDP tutorials, run as one process on gloo.

A `Trainer` holds the model (wrapped in DistributedDataParallel), the DataLoader with a
DistributedSampler, and the optimizer; `_run_batch` / `_run_epoch` / `train` do the
work; the snapshot saves the model's state and `EPOCHS_RUN`. The environment a launcher
would set (RANK, WORLD_SIZE, MASTER_ADDR/PORT) is filled in when absent, so plain
`python` runs it as a world of one.

Broken as the tutorials' toy is (the default): the model has one output and the loss is
cross-entropy against float targets of shape (N, 1). A softmax over one logit is 1, its
log 0, so the loss is exactly 0 at every step and nothing learns. `--classes 4` is the
correct variant: four logits and integer class targets.
"""

import gc
import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class RandomTrainDataset(Dataset):
    """Features with a learnable target: the class is which quarter of the feature sum it falls in."""

    def __init__(self, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 20, generator=g)
        if classes == 1:
            self.y = torch.rand(size, 1, generator=g)
        else:
            sums = self.x.sum(1)
            self.y = torch.bucketize(sums, sums.quantile(torch.linspace(0, 1, classes + 1)[1:-1]))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def ddp_setup() -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        store = tempfile.NamedTemporaryFile(prefix="ddp-store-", delete=False).name
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        return
    dist.init_process_group("gloo")


class Trainer:
    def __init__(self, model, train_data: DataLoader, optimizer, save_every: int, snapshot_path: str) -> None:
        self.model = DDP(model)
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.snapshot_path = snapshot_path
        self.epochs_run = 0

    def _run_batch(self, source, targets) -> float:
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.cross_entropy(output, targets)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _run_epoch(self, epoch: int) -> None:
        self.train_data.sampler.set_epoch(epoch)
        losses = [self._run_batch(source, targets) for source, targets in self.train_data]
        print(f"[rank {dist.get_rank()}] epoch {epoch} | steps {len(losses)} | loss {sum(losses) / len(losses):.4f}",
              flush=True)

    def _save_snapshot(self, epoch: int) -> None:
        torch.save({"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}, self.snapshot_path)

    def train(self, max_epochs: int) -> None:
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if dist.get_rank() == 0 and epoch % self.save_every == 0:
                self._save_snapshot(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description="DDP trainer, one process")
    parser.add_argument("--total_epochs", type=int, default=3)
    parser.add_argument("--save_every", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--snapshot", default="snapshot.pt")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ddp_setup()
    dataset = RandomTrainDataset(256, args.classes)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, sampler=DistributedSampler(dataset))
    model = torch.nn.Linear(20, args.classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 if args.classes > 1 else 1e-3)
    Trainer(model, loader, optimizer, args.save_every, args.snapshot).train(args.total_epochs)
    gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

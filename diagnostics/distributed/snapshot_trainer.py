"""A trainer class in the shape of the DDP tutorials people start from: torchrun sets the
rank, a DistributedSampler shards the data, each epoch peeks one batch to print the batch
size (`next(iter(loader))`) before `set_epoch`, and a snapshot dict with the model and
`EPOCHS_RUN` is saved every epoch and resumed from when present.

    torchrun --nproc_per_node 2 snapshot_trainer.py --epochs 2 [--forget-set-epoch]

Correct as written: the peek is not an epoch and the snapshot holds its epoch count.
`--forget-set-epoch` drops the `set_epoch` call: every epoch replays the same order.
"""
import gc
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class RandomRegression(Dataset):
    def __init__(self, size: int):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 20, generator=generator)
        self.y = torch.randn(size, 1, generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Trainer:
    def __init__(self, model, loader, optimizer, snapshot_path, set_epoch=True):
        self.rank = int(os.environ["LOCAL_RANK"])
        self.loader = loader
        self.optimizer = optimizer
        self.snapshot_path = snapshot_path
        self.set_epoch = set_epoch
        self.epochs_run = 0
        self.model = model
        if os.path.exists(snapshot_path):
            snapshot = torch.load(snapshot_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(snapshot["MODEL_STATE"])
            self.epochs_run = snapshot["EPOCHS_RUN"]
        self.model = DDP(self.model)

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        loss = F.mse_loss(self.model(source), targets)
        loss.backward()
        self.optimizer.step()

    def _run_epoch(self, epoch):
        batch_size = len(next(iter(self.loader))[0])
        print(f"[rank {self.rank}] epoch {epoch} | batch size {batch_size} | steps {len(self.loader)}")
        if self.set_epoch:
            self.loader.sampler.set_epoch(epoch)
        for source, targets in self.loader:
            self._run_batch(source, targets)

    def _save_snapshot(self, epoch):
        snapshot = {"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}
        torch.save(snapshot, self.snapshot_path)

    def train(self, max_epochs):
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if self.rank == 0:
                self._save_snapshot(epoch)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--snapshot", default="snapshot.pt")
    parser.add_argument("--forget-set-epoch", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    dataset = RandomRegression(128)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, sampler=DistributedSampler(dataset))
    model = torch.nn.Linear(20, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    Trainer(model, loader, optimizer, args.snapshot, set_epoch=not args.forget_set_epoch).train(args.epochs)
    gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

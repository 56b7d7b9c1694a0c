"""ResNet trained with DistributedDataParallel under torchrun; `--bug` picks a mistake.

    torchrun --nproc_per_node 2 sample_models/resnet_ddp.py --bug no_sampler

gloo on CPU, NCCL on CUDA (each rank on cuda:LOCAL_RANK).

bugs:
  no_sampler       a plain shuffled DataLoader with the same seed on every rank: each
                   rank trains on exactly the same batches (an epoch does the work of one GPU)
  no_set_epoch     a DistributedSampler whose set_epoch is never called: every epoch
                   replays the same order
  skip_collective  the epoch's mean loss is all-reduced inside `if rank == 0:`, so rank 1
                   never joins that all_reduce and rank 0 waits for it (a hang until the
                   process-group time-out, `--pg-timeout`)
  unused_param     an auxiliary head that never enters the loss: DDP stops at the second
                   step because its parameters got no gradient
"""

import gc
import datetime
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

import _common

BUGS = ("no_sampler", "no_set_epoch", "skip_collective", "unused_param")


class WithAuxHead(torch.nn.Module):
    """A classifier with an auxiliary head someone meant to train and forgot to use."""

    def __init__(self, backbone: torch.nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.aux_head = torch.nn.Linear(num_classes, num_classes)

    def forward(self, x):
        return self.backbone(x)


def data_loader(args, dataset, rank: int, world: int) -> DataLoader:
    if args.bug == "no_sampler":
        return _common.loader(args, dataset)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers)


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0], BUGS)
    parser.add_argument("--pg-timeout", type=float, default=1800.0, help="process-group time-out, seconds")
    args = parser.parse_args()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo",
                            timeout=datetime.timedelta(seconds=args.pg_timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _common.setup(args)
    model = _common.resnet(args)
    if args.bug == "unused_param":
        model = WithAuxHead(model, args.num_classes)
    model = model.to(device)
    ddp = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = _common.sgd(args, ddp)
    data = data_loader(args, _common.fake_data(args), rank, world)
    for epoch in range(args.epochs):
        if args.bug not in ("no_sampler", "no_set_epoch"):
            data.sampler.set_epoch(epoch)
        ddp.train()
        total = torch.zeros(2, device=device)
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(ddp(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += torch.stack([loss.detach(), torch.ones((), device=device)])
        if args.bug == "skip_collective":
            if rank == 0:
                dist.all_reduce(total)
                print(f"epoch {epoch}: loss {float(total[0] / total[1]):.4f}", flush=True)
        else:
            dist.all_reduce(total)
            if rank == 0:
                print(f"epoch {epoch}: loss {float(total[0] / total[1]):.4f}", flush=True)
    gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

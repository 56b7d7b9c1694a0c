"""Checkpoint save and resume: full state by default, or one of the usual mistakes.

    python sample_models/resnet_ckpt.py --epochs 4                      # saves ckpt.pt each epoch
    python sample_models/resnet_ckpt.py --epochs 4 --resume ckpt.pt     # continues where it was

By default every epoch saves what an exact resume needs: model, optimizer, LR
scheduler, epoch and step counters, the python/numpy/torch/CUDA RNG states and the
DataLoader generator's state (which decides the next epoch's shuffle), plus the
arguments; resuming from it continues the uninterrupted run bit for bit on CPU.
Augmentation draws from python's and numpy's RNGs (a flip and a brightness jitter),
shuffling from the loader's generator, so every one of those states matters.

--bug unseeded      nothing is seeded: initial weights, shuffle and augmentation differ per run
--bug model_only    the checkpoint holds the weights only: momentum and the LR schedule
                    restart on resume (resume with --start-epoch, the script cannot know it)
--bug no_rng_state  everything but the RNG and generator states: after a resume the
                    shuffle and augmentation differ from the uninterrupted run
--bug overwrite     best_model.pt is rewritten every epoch with weights only: no epoch,
                    no metric, nothing tells the versions apart
"""

import random

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms

import _common

BUGS = ("unseeded", "model_only", "no_rng_state", "overwrite")


class Augment:
    """A hand-written augmentation, as many projects have: python flips, numpy jitters."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if random.random() < 0.5:
            image = image.flip(-1)
        return image * float(np.random.uniform(0.8, 1.2))


def rng_state(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint(args, model, optimizer, scheduler, data, epoch: int, step: int, device) -> dict:
    if args.bug == "model_only":
        return model.state_dict()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "args": vars(args)}
    if args.bug != "no_rng_state":
        state["rng"] = rng_state(device)
        if data.generator is not None:
            state["loader_generator"] = data.generator.get_state()
    return state


def resume(args, model, optimizer, scheduler, data) -> tuple[int, int]:
    """Restore what the checkpoint holds; returns (first epoch, global step) to go on from."""
    state = torch.load(args.resume, map_location=args.device, weights_only=True)
    if "model" not in state:  # weights only
        model.load_state_dict(state)
        return args.start_epoch, 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:
        set_rng_state(state["rng"])
    if "loader_generator" in state:
        data.generator.set_state(state["loader_generator"])
    return state["epoch"], state["step"]


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0], BUGS)
    parser.add_argument("--ckpt", default="ckpt.pt", help="where each epoch's checkpoint goes")
    parser.add_argument("--resume", help="checkpoint to continue from")
    parser.add_argument("--start-epoch", type=int, default=0, help="epoch to resume at when the checkpoint lacks it")
    args = parser.parse_args()
    if args.bug == "unseeded":
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device(args.device)
    else:
        device = _common.setup(args)
    model = _common.resnet(args).to(device)
    optimizer = _common.sgd(args, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    dataset = _common.fake_data(args, transforms.Compose([transforms.ToTensor(), Augment()]))
    if args.bug == "unseeded":  # shuffles with the global, unseeded torch RNG
        data = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                           num_workers=args.workers)
    else:
        data = _common.loader(args, dataset)
    first_epoch, step = resume(args, model, optimizer, scheduler, data) if args.resume else (0, 0)
    for epoch in range(first_epoch, args.epochs):
        model.train()
        total = 0.0
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += loss.item()
        scheduler.step()
        torch.save(checkpoint(args, model, optimizer, scheduler, data, epoch + 1, step, device), args.ckpt)
        if args.bug == "overwrite":
            torch.save(model.state_dict(), "best_model.pt")
        print(f"epoch {epoch}: loss {total / len(data):.4f} step {step}", flush=True)


if __name__ == "__main__":
    main()

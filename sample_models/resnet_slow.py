"""ResNet training that is slower than it should be; `--bug` picks the cause.

    python sample_models/resnet_slow.py --bug dataloader

bugs:
  dataloader         num_workers=0 and an expensive per-sample transform (upscale, blur,
                     downscale): the training loop waits for every batch
  sync               logs every step the way notebooks do: .item() on several metrics,
                     predictions gathered with .cpu().tolist(), the loss tensor printed
  python_loop        the classifier head computes each logit in a Python loop over
                     samples and classes: thousands of tiny ops per step
  float64            model and inputs in float64 (model.double())
  optimizer_rebuilt  a new optimizer is built inside the loop, every step
  batch1             batch size 1: per-op overhead dominates
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

import _common

BUGS = ("dataloader", "sync", "python_loop", "float64", "optimizer_rebuilt", "batch1")


class LoopLinear(nn.Module):
    """A linear layer written as loops over samples and classes (the python_loop bug)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features) / features ** 0.5)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(x.shape[0]):
            rows.append(torch.stack([(x[i] * self.weight[c]).sum() + self.bias[c]
                                     for c in range(self.weight.shape[0])]))
        return torch.stack(rows)


def expensive_transform(size: int):
    """What a heavy augmentation pipeline costs per sample, in the training process."""
    return transforms.Compose([transforms.Resize(size * 12), transforms.GaussianBlur(11, sigma=3.0),
                               transforms.Resize(size), transforms.ToTensor()])


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0], BUGS).parse_args()
    if args.bug == "batch1":
        args.batch_size = 1
        args.image_size = max(args.image_size, 64)  # BatchNorm needs more than one value per channel
    if args.bug == "dataloader":
        args.workers = 0
    device = _common.setup(args)
    model = _common.resnet(args)
    if args.bug == "python_loop":
        model.fc = LoopLinear(model.fc.in_features, args.num_classes)
    dtype = torch.float64 if args.bug == "float64" else torch.float32
    model = model.to(device, dtype)
    optimizer = _common.sgd(args, model)
    transform = expensive_transform(args.image_size) if args.bug == "dataloader" else None
    data = _common.loader(args, _common.fake_data(args, transform))
    for epoch in range(args.epochs):
        model.train()
        total, correct, seen, predictions = 0.0, 0, 0, []
        for step, (images, labels) in enumerate(data):
            images, labels = images.to(device, dtype), labels.to(device)
            if args.bug == "optimizer_rebuilt":
                optimizer = _common.sgd(args, model)
            output = model(images)
            loss = F.cross_entropy(output, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if args.bug == "sync":
                correct += (output.argmax(1) == labels).sum().item()
                predictions.extend(output.argmax(1).cpu().tolist())
                print(f"epoch {epoch} step {step}: loss {loss} lr {optimizer.param_groups[0]['lr']}")
            total += loss.detach()
            seen += len(labels)
        print(f"epoch {epoch}: loss {float(total) / max(1, len(data)):.4f} samples {seen}", flush=True)


if __name__ == "__main__":
    main()

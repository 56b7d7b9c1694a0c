"""ResNet training whose loss goes non-finite; `--bug` picks the cause.

    python sample_models/resnet_nan.py --bug lr      # a learning-rate schedule that blows up

bugs:
  lr       the schedule multiplies the learning rate by 10 every epoch (a mistyped warm-up):
           fine for two epochs, then the weights explode and the loss becomes NaN
  logzero  the classifier ends in a hand-written, temperature-sharpened log-softmax,
           log(softmax(x / 0.01)): softmax underflows to exactly 0 and log(0) = -inf
  zerostd  a hand-written per-channel standardisation after the last stage, (x - mean) / std
           over the spatial positions: at 32x32 inputs that stage is 1x1, std is 0, 0/0 = NaN
  sqrt     the same standardisation "fixed" with an epsilon, (x - mean) / (sqrt(var) + eps):
           the forward is finite now, but the derivative of sqrt at 0 is infinite, so the
           gradients still go NaN (backward only)
  poison   one corrupt sample in the dataset decodes to NaN pixels
  fp16     mixed precision (autocast float16 + GradScaler) on 16-bit images that were never
           normalised to [0, 1]: the first convolution's outputs exceed float16's 65504
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

import _common

BUGS = ("lr", "logzero", "zerostd", "sqrt", "poison", "fp16")
POISONED_INDEX = 37  # the corrupt sample (or the last one in a smaller dataset)
SIXTEEN_BIT = 65535.0  # raw 16-bit sensor range


def lr_factor(bug):
    if bug == "lr":
        return lambda epoch: 10.0 ** epoch
    return lambda epoch: 1.0


class HandLogSoftmax(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, x):
        return torch.log(torch.softmax(x / self.temperature, dim=1))


class Standardize(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return (x - mean) / (torch.sqrt(var) + self.eps)


class Poisoned(Dataset):
    """The dataset with one sample whose pixels are NaN (a corrupt file)."""

    def __init__(self, dataset, index: int) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        if i == self.index:
            image = torch.full_like(image, float("nan"))
        return image, label


class Unnormalised(Dataset):
    """Images in the 16-bit sensor range, [0, 65535], as read from raw files."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return image * SIXTEEN_BIT, label


def build_model(args):
    model = _common.resnet(args)
    if args.bug == "logzero":
        model.fc = nn.Sequential(model.fc, HandLogSoftmax(temperature=0.01))
    elif args.bug in ("zerostd", "sqrt"):
        model.layer4.append(Standardize(eps=0.0 if args.bug == "zerostd" else 1e-5))
    return model


def build_data(args):
    dataset = _common.fake_data(args)
    if args.bug == "poison":
        dataset = Poisoned(dataset, min(POISONED_INDEX, len(dataset) - 1))
    elif args.bug == "fp16":
        dataset = Unnormalised(dataset)
    return _common.loader(args, dataset)


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0], BUGS).parse_args()
    device = _common.setup(args)
    model = build_model(args).to(device)
    optimizer = _common.sgd(args, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args.bug))
    data = build_data(args)
    amp = args.bug == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = F.nll_loss if args.bug == "logzero" else F.cross_entropy
    for epoch in range(args.epochs):
        model.train()
        total, batches = 0.0, 0
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.item()
            batches += 1
        scheduler.step()
        print(f"epoch {epoch}: loss {total / batches:.4f} lr {scheduler.get_last_lr()[0]:g}", flush=True)


if __name__ == "__main__":
    main()

"""ResNet training whose loss goes non-finite; `--bug` picks the cause.

    python sample_models/resnet_nan.py --bug lr      # a learning-rate schedule that blows up

bugs:
  lr   the schedule multiplies the learning rate by 10 every epoch (a mistyped warm-up):
       fine for two epochs, then the weights explode and the loss becomes NaN
"""

import torch
import torch.nn.functional as F

import _common

BUGS = ("lr",)


def lr_factor(bug):
    if bug == "lr":
        return lambda epoch: 10.0 ** epoch
    return lambda epoch: 1.0


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0], BUGS).parse_args()
    device = _common.setup(args)
    model = _common.resnet(args).to(device)
    optimizer = _common.sgd(args, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args.bug))
    data = _common.loader(args, _common.fake_data(args))
    for epoch in range(args.epochs):
        model.train()
        total, batches = 0.0, 0
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        scheduler.step()
        print(f"epoch {epoch}: loss {total / batches:.4f} lr {scheduler.get_last_lr()[0]:g}", flush=True)


if __name__ == "__main__":
    main()

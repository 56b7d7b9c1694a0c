"""Healthy baseline: ResNet on FakeData, SGD with momentum, nothing wrong.

    python sample_models/resnet_healthy.py --epochs 2
"""

import torch
import torch.nn.functional as F

import _common


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    device = _common.setup(args)
    model = _common.resnet(args).to(device)
    optimizer = _common.sgd(args, model)
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
        print(f"epoch {epoch}: loss {total / batches:.4f}", flush=True)


if __name__ == "__main__":
    main()

"""Healthy baseline: ResNet on FakeData, SGD with momentum, nothing wrong.

    python sample_models/resnet_healthy.py --epochs 2
"""

import json
import time

import torch.nn.functional as F

import _common


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--step-times", help="write each iteration's wall time (s) as JSON here (benchmarks)")
    args = parser.parse_args()
    device = _common.setup(args)
    model = _common.resnet(args).to(device)
    optimizer = _common.sgd(args, model)
    data = _common.loader(args, _common.fake_data(args))
    step_times = []
    for epoch in range(args.epochs):
        model.train()
        total, batches = 0.0, 0
        start = time.perf_counter()
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
            now = time.perf_counter()
            step_times.append(now - start)
            start = now
        print(f"epoch {epoch}: loss {total / batches:.4f}", flush=True)
    if args.step_times:
        with open(args.step_times, "w") as fh:
            json.dump(step_times, fh)


if __name__ == "__main__":
    main()

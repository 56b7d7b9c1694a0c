"""Healthy baseline: ResNet on FakeData, SGD with momentum, nothing wrong.

    python sample_models/resnet_healthy.py --epochs 2
    python sample_models/resnet_healthy.py --device cuda --autocast bf16   # mixed precision, still healthy
"""

import contextlib
import json
import time

import torch
import torch.nn.functional as F

import _common


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0])
    parser.add_argument("--step-times", help="write each iteration's wall time (s) as JSON here (benchmarks)")
    parser.add_argument("--autocast", choices=["bf16"], help="forward and loss under torch.autocast in this dtype")
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
            with (torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast else contextlib.nullcontext()):
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

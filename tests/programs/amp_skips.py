"""float16 autocast with a GradScaler whose first scale is far too large: the first
updates are skipped (inf gradients) until the scale has halved enough. Prints, per
backward pass, the loss as the program sees it and whether the update happened.
argv[1]: log2 of the first scale (default 20; 60 skips every update of the 12)."""

import sys

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** int(sys.argv[1] if len(sys.argv) > 1 else 20))
x, y = torch.randn(64, 16), torch.randn(64, 1)
for _ in range(12):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    print(f"loss {loss.item():.6f} {'skipped' if scaler.get_scale() < before else 'stepped'}", flush=True)

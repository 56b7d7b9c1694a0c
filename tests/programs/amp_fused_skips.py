"""float16 autocast on CPU with a GradScaler and a fused Adam: GradScaler.step always calls
the fused optimizer's step, which skips the update itself when the gradients overflowed
(found_inf). The first scale is far too large, so the first updates are skipped until it
has halved enough. Prints, per iteration, the loss and whether the update happened (the
scale went down: skipped). argv[1]: log2 of the first scale (default 24)."""

import sys

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** int(sys.argv[1] if len(sys.argv) > 1 else 24))
x, y = torch.randn(64, 16), torch.randn(64, 1)
for _ in range(10):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    print(f"loss {loss.item():.6f} {'skipped' if scaler.get_scale() < before else 'stepped'}", flush=True)

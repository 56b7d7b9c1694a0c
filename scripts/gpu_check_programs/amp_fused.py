"""Check 4 of scripts/gpu_check.py: fp16 autocast with a GradScaler over a fused AdamW,
whose skipped steps happen on the device (GradScaler.step always calls optimizer.step
with fused=True). The program counts them itself: a step is skipped when update()
lowered the scale. Prints `SKIPPED <n> OF <steps>`.
"""

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
# too high: fp16 gradients overflow until the scale has halved to ~2**15 (a few skipped steps), then steps are taken
scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 20)
STEPS = 12
skipped = 0
for step in range(STEPS):
    x, y = torch.randn(64, 256, device="cuda"), torch.randn(64, 1, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    skipped += scaler.get_scale() < scale
print("SKIPPED", skipped, "OF", STEPS, flush=True)

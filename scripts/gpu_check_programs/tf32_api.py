"""Check 4 of scripts/gpu_check.py: a program that sets TF32 through the new
`fp32_precision` API (reading the old `allow_tf32` then raises). Prints `STEPS <n>`.
"""

import torch
from torch import nn

torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.cudnn.conv.fp32_precision = "tf32"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
STEPS = 6
for step in range(STEPS):
    torch.manual_seed(step)
    loss = model(torch.randn(32, 128, device="cuda")).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("STEPS", STEPS, flush=True)

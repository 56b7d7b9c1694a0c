"""A seeded tiny training that sets TF32 through torch's new precision API
(torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision): once it is
used, reading the legacy flags (torch.backends.cuda.matmul.allow_tf32) raises. On CPU
the settings change nothing. Prints each step's loss."""

import torch

torch.backends.fp32_precision = "tf32"
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for _ in range(4):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"loss {loss.item():.6f}", flush=True)

"""A small MLP trained from a DataLoader whose batch does not fit the device: out of memory
at the first step, and a batch half the size fits.

CUDA's out-of-memory cannot happen on purpose on a CPU box, so the device limit here is
the program's own: before each forward it counts the bytes the batch's activations will
take (rows x the hidden widths x 4 bytes, float32) and, above LIMIT_BYTES, raises
torch.OutOfMemoryError itself, as the CUDA caching allocator would on a device that small.
Nothing else about memory is emulated: no snapshot, no allocator state.

    python oom_batch.py [--batch 64] [--steps 20]
"""
import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

WIDTHS = (32, 256, 256, 1)  # input, hidden..., output
ACTIVATION_BYTES_PER_ROW = 4 * sum(WIDTHS[1:])
LIMIT_BYTES = 48 * ACTIVATION_BYTES_PER_ROW  # a batch of 48 rows fits, 64 does not


def check_fits(rows: int) -> None:
    need = rows * ACTIVATION_BYTES_PER_ROW
    if need > LIMIT_BYTES:
        raise torch.OutOfMemoryError(
            f"CUDA out of memory (this program's own device limit of {LIMIT_BYTES} bytes). "
            f"Tried to allocate {need} bytes for a batch of {rows} rows.")


parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()
torch.manual_seed(0)
layers = []
for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
    layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(WIDTHS) - 2 else [])
model = torch.nn.Sequential(*layers)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
data = TensorDataset(torch.randn(1024, WIDTHS[0]), torch.randn(1024, 1))
loader = DataLoader(data, batch_size=args.batch, shuffle=True)
step = 0
while step < args.steps:
    for x, y in loader:
        check_fits(x.shape[0])
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step >= args.steps:
            break
print(f"trained {step} steps, last loss {loss.item():.4f}")

"""An MLP regression with a custom autograd Function whose backward is wrong at 0.

`ShiftedSoftLog` computes log(1 + |x|) and its hand-written backward returns
sign(x) / |1 + x| with a typo: `1 + x` instead of `1 + |x|`. The forward is finite
everywhere; the gradient divides by zero wherever a pre-activation is exactly -1, which
happens once the ReLU-free first layer's outputs are rounded (the data are integers).
"""

import argparse

import torch
import torch.nn as nn


class ShiftedSoftLog(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log1p(x.abs())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sign(x) / (1 + x).abs()


class SoftLog(nn.Module):
    def forward(self, x):
        return ShiftedSoftLog.apply(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-2)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    features = torch.randint(-3, 4, (512, 8)).float()
    target = features @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), SoftLog(), nn.Linear(8, 1))
    with torch.no_grad():  # an identity first layer: integer pre-activations, -1 among them
        model[0].weight.copy_(torch.eye(8))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        rows = torch.arange(step * 16, step * 16 + 16) % 512
        loss = nn.functional.mse_loss(model(features[rows]), target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()

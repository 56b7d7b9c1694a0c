"""Meta-learning on sine waves, MAML style, with no torch.optim at all: each meta-iteration
adapts a copy of the weights to a few tasks with inner gradient steps taken by
`torch.autograd.grad(..., create_graph=True)` (functional: the model's parameters do not
change), then takes the meta-gradient of the query losses with `torch.autograd.grad`
and updates the parameters by hand under `torch.no_grad()`.

One training step is one meta-update; the inner steps are not steps.

    python maml_autograd_grad.py --meta-iters 6
"""

import argparse

import torch
from torch import nn
from torch.func import functional_call


def sample_tasks(count: int, shots: int, generator: torch.Generator):
    """Sine waves of random amplitude and phase: (support x, y, query x, y) per task."""
    amplitude = torch.rand(count, 1, 1, generator=generator) * 4.9 + 0.1
    phase = torch.rand(count, 1, 1, generator=generator) * 3.1416
    x = torch.rand(count, 2 * shots, 1, generator=generator) * 10 - 5
    y = amplitude * torch.sin(x + phase)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def adapt(model: nn.Module, x: torch.Tensor, y: torch.Tensor, inner_lr: float, inner_steps: int) -> dict:
    """Fast weights after `inner_steps` gradient steps on the support set; the graph is kept
    so the meta-gradient flows through the adaptation."""
    weights = dict(model.named_parameters())
    for _ in range(inner_steps):
        loss = nn.functional.mse_loss(functional_call(model, weights, (x,)), y)
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        weights = {name: w - inner_lr * g for (name, w), g in zip(weights.items(), grads)}
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meta-iters", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--meta-lr", type=float, default=0.001)
    parser.add_argument("--hidden", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(1, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, 1))
    params = list(model.parameters())
    for iteration in range(1, args.meta_iters + 1):
        support_x, support_y, query_x, query_y = sample_tasks(args.tasks, args.shots, generator)
        meta_loss = 0.0
        for task in range(args.tasks):
            weights = adapt(model, support_x[task], support_y[task], args.inner_lr, args.inner_steps)
            prediction = functional_call(model, weights, (query_x[task],))
            meta_loss = meta_loss + nn.functional.mse_loss(prediction, query_y[task])
        meta_loss = meta_loss / args.tasks
        meta_grads = torch.autograd.grad(meta_loss, params)
        with torch.no_grad():
            for p, g in zip(params, meta_grads):
                p -= args.meta_lr * g
        print(f"meta-iteration {iteration}: query loss {meta_loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()

"""Check 1 of scripts/gpu_check.py: what a program sees must not change under ptdiag.
Each mode prints what it observed; gpu_check runs it bare and under ptdiag and compares.

    python behaviour.py visible      # CUDA_VISIBLE_DEVICES="" set after `import torch`
    python behaviour.py alloc_conf   # PYTORCH_CUDA_ALLOC_CONF set after `import torch`
    python behaviour.py fork         # a forked child uses CUDA (the parent has not yet)
    python behaviour.py graph        # a whole training step captured in torch.cuda.graph
"""

import os
import sys

import torch
from torch import nn


def model_and_optimizer(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def train(device, steps: int = 3) -> float:
    """A few plain steps, so that the probe's hooks run as in any training."""
    model, optimizer = model_and_optimizer(device)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(32, 64, generator=generator).to(device)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def visible() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # honoured: CUDA is not initialised yet
    print("cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
    print(f"loss {train('cpu'):.6f}")


def alloc_conf() -> None:
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # read when CUDA initialises
    print(f"loss {train('cuda'):.6f}")
    segments = torch.cuda.memory._snapshot()["segments"]
    print("expandable segments:", bool(segments) and all(s.get("is_expandable") for s in segments))


def fork() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            print("child sum", torch.ones(4, device="cuda").sum().item(), flush=True)
            code = 0
        except Exception as error:  # "Cannot re-initialize CUDA in forked subprocess"
            print("child failed:", type(error).__name__, error, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    print(f"loss {train('cuda'):.6f}")


def graph() -> None:
    """torch's whole-network capture recipe: warm-up on a side stream, then capture the
    forward, backward and optimizer step, then replay with new data in the static input."""
    model, optimizer = model_and_optimizer("cuda")
    static_x = torch.randn(32, 64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            model(static_x).pow(2).mean().backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = model(static_x).pow(2).mean()
        static_loss.backward()
        optimizer.step()
    generator = torch.Generator().manual_seed(1)
    for replay in range(5):
        static_x.copy_(torch.randn(32, 64, generator=generator))
        graph.replay()
        print("replay", replay, f"{static_loss.item():.6f}")


if __name__ == "__main__":
    {"visible": visible, "alloc_conf": alloc_conf, "fork": fork, "graph": graph}[sys.argv[1]]()

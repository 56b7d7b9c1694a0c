"""A compute-bound CPU training (an MLP's 512x512 matmuls at batch 512: long enough that a
loaded machine descheduling the Python between them leaves the step inside ops, small
enough that no allocation moves the process's memory, which the profiler window is
bounded by) that limits torch to `--threads` threads, as a program pinned for another
machine might: the step's time is op time."""
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--steps", type=int, default=30)
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = torch.nn.Sequential(*(layer for _ in range(4) for layer in (torch.nn.Linear(512, 512), torch.nn.ReLU())))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(512, 512), torch.randn(512, 512)
for _ in range(args.steps):
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()

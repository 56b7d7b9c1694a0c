"""A compute-bound CPU training that limits torch to `--threads` threads, as a program
pinned for another machine might: the step's time is op time (512x512 matmuls at batch
512: a loaded machine descheduling the Python between them still leaves the step inside
ops). Its data set is held in memory (768 MiB), as many are: ptdiag's profiler window may
grow a process by a share of its size, and a bare 700 MiB torch process saw the window
cut at its first recorded step on a loaded box (its trace then had no step to analyse)."""
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--data-mib", type=int, default=768)
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
data = torch.ones(args.data_mib * 2**20 // (4 * 512), 512)  # touched: resident, as a loaded data set is
model = torch.nn.Sequential(*(layer for _ in range(4) for layer in (torch.nn.Linear(512, 512), torch.nn.ReLU())))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(args.steps):
    x = data[step * 512:(step + 1) * 512]
    loss = (model(x) - x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()

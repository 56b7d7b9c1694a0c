"""A small training with dropout, shuffling, momentum and an LR schedule, whose seeding
and checkpoints are chosen on the command line (reproducibility tests).

    --seed N | none | time     how (and whether) torch/python are seeded
    --save full | model | no_rng | none
    --ckpt PATH (saved after every epoch), --resume PATH
    --split                     model and optimizer go to two files (PATH and PATH.optim)
"""
import argparse
import random
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--seed", default="0")
p.add_argument("--save", default="full", choices=["full", "model", "no_rng", "none"])
p.add_argument("--ckpt", default="ckpt.pt")
p.add_argument("--resume")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--split", action="store_true")
args = p.parse_args()

torch.set_num_threads(args.threads)
if args.seed == "time":
    torch.manual_seed(int(time.time() * 1e6) % 2**31)
elif args.seed != "none":
    torch.manual_seed(int(args.seed))
    random.seed(int(args.seed))

data_gen = torch.Generator().manual_seed(1234)  # the data set itself never changes
dataset = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=data_gen), torch.randn(32, 1, generator=data_gen))
loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

start_epoch = 0
if args.resume:
    state = torch.load(args.resume, weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"]
    if args.split:  # the model file holds {"model": ...}; the rest is beside it
        extra = torch.load(args.resume + ".optim", weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        start_epoch = extra["epoch"]
        state = extra
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

for epoch in range(start_epoch, args.epochs):
    for x, y in loader:
        x = x + 0.01 * random.random()  # python-random augmentation
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
    if args.save == "none":
        continue
    if args.save == "model":
        torch.save(model.state_dict(), args.ckpt)
        continue
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch + 1}
    if args.save == "full":
        state["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if args.split:
        torch.save({"model": state.pop("model")}, args.ckpt)
        torch.save(state, args.ckpt + ".optim")
    else:
        torch.save(state, args.ckpt)
print("final loss", loss.item())

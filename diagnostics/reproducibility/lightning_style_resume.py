"""A Lightning-style checkpoint written by hand: "state_dict", "optimizer_states" and
"lr_schedulers" lists, "epoch" and "global_step" -- but no RNG state, while dropout and
the DataLoader's shuffle draw from torch's global generator. A resume continues with
other dropout masks and another batch order.

    python lightning_style_resume.py            # trains 3 epochs, ckpt each epoch
    python lightning_style_resume.py --resume last.ckpt
"""
import argparse

import torch

p = argparse.ArgumentParser()
p.add_argument("--resume")
p.add_argument("--epochs", type=int, default=3)
args = p.parse_args()
torch.manual_seed(7)
torch.set_num_threads(1)
data = torch.utils.data.TensorDataset(torch.randn(48, 10), torch.randint(0, 3, (48,)))
loader = torch.utils.data.DataLoader(data, batch_size=12, shuffle=True)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 3))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
epoch, global_step = 0, 0
if args.resume:
    ckpt = torch.load(args.resume, weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer_states"][0])
    sched.load_state_dict(ckpt["lr_schedulers"][0])
    epoch, global_step = ckpt["epoch"], ckpt["global_step"]
for epoch in range(epoch, args.epochs):
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        global_step += 1
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
                "lr_schedulers": [sched.state_dict()], "epoch": epoch + 1, "global_step": global_step,
                "hyper_parameters": {"lr": 1e-2, "epochs": args.epochs}}, "last.ckpt")
print("loss", loss.item())

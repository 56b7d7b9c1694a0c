"""A GPT-style loop as small scripts write it: no torch.optim scheduler, the learning rate
computed every iteration from `iter_num` (warm-up then cosine decay) and written into the
optimizer's param groups; every few iterations a checkpoint dict with the model, the
optimizer, `iter_num` and the config; at the end the whole model saved through an open
file, as `with open(path, "wb") as f: torch.save(model, f)`.

    python iter_lr_checkpoint.py OUT_DIR
"""
import math
import os
import sys

import torch

config = {"learning_rate": 1e-3, "warmup_iters": 3, "max_iters": 12, "eval_interval": 4}
out_dir = sys.argv[1]
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Embedding(32, 16), torch.nn.Flatten(), torch.nn.Linear(16 * 8, 32))
optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])


def get_lr(it: int) -> float:
    if it < config["warmup_iters"]:
        return config["learning_rate"] * (it + 1) / (config["warmup_iters"] + 1)
    progress = (it - config["warmup_iters"]) / (config["max_iters"] - config["warmup_iters"])
    return 0.1 * config["learning_rate"] + 0.45 * config["learning_rate"] * (1 + math.cos(math.pi * progress))


for iter_num in range(config["max_iters"]):
    for group in optimizer.param_groups:
        group["lr"] = get_lr(iter_num)
    x = torch.randint(0, 32, (4, 8))
    loss = torch.nn.functional.cross_entropy(model(x), x[:, 0])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if iter_num > 0 and iter_num % config["eval_interval"] == 0:
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "iter_num": iter_num, "best_val_loss": loss.item(), "config": config}
        torch.save(checkpoint, os.path.join(out_dir, "ckpt.pt"))

with open(os.path.join(out_dir, "model.pt"), "wb") as f:
    torch.save(model, f)

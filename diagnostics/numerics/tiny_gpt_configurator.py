"""A tiny GPT trained the way small single-file GPT trainers do it.

Config is module globals, overridden from the command line as `--key=value` (no
argparse): the value is read as a Python literal and must keep the default's type. The
learning rate is computed from the iteration number every step (linear warm-up, then
cosine decay to `min_lr`) and written into the optimizer's param groups; gradients are
accumulated over micro-batches and clipped; AdamW decays only the 2-D weights. The data
is a generated token stream, so the program runs anywhere.

Broken with `--learning_rate=1000`: the loss and the gradient norm blow up within a few
iterations, whatever op overflows at the end.
"""

import math
import sys
from ast import literal_eval

import torch
import torch.nn as nn
import torch.nn.functional as F

# -- config: defaults, overridable as --key=value --------------------------------------------
batch_size = 8
block_size = 16
vocab_size = 64
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.0
learning_rate = 1e-3
max_iters = 30
weight_decay = 0.1
beta1, beta2 = 0.9, 0.95
grad_clip = 1.0
warmup_iters = 5
lr_decay_iters = 30
min_lr = 1e-4
gradient_accumulation_steps = 2
log_interval = 5
seed = 1337

for arg in sys.argv[1:]:
    key, sep, value = arg.removeprefix("--").partition("=")
    if not arg.startswith("--") or not sep:
        raise SystemExit(f"expected --key=value, got {arg!r}")
    if key not in globals():
        raise SystemExit(f"unknown config key: {key}")
    try:
        parsed = literal_eval(value)
    except (SyntaxError, ValueError):
        parsed = value
    if isinstance(globals()[key], float) and isinstance(parsed, int):
        parsed = float(parsed)
    if type(parsed) is not type(globals()[key]):
        raise SystemExit(f"{key} must be a {type(globals()[key]).__name__}")
    print(f"overriding: {key} = {parsed}")
    globals()[key] = parsed


# -- model ---------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention()
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block() for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied input and output embeddings
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2))


# -- data and schedule -----------------------------------------------------------------------
def token_stream(length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab_size, (vocab_size, 2), generator=g)
    ids = [0]
    for _ in range(length - 1):
        ids.append(int(successors[ids[-1], torch.randint(0, 2, (1,), generator=g)]))
    return torch.tensor(ids)


def get_batch(data: torch.Tensor):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


def get_lr(it: int) -> float:
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def main() -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    data = token_stream(4000)
    model = GPT()
    optimizer = model.configure_optimizers()
    iter_num = 0
    X, Y = get_batch(data)
    while iter_num < max_iters:
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        for micro_step in range(gradient_accumulation_steps):
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
            X, Y = get_batch(data)  # the next batch, fetched while this one's backward would run
            loss.backward()
        if grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if iter_num % log_interval == 0:
            print(f"iter {iter_num}: loss {loss.item() * gradient_accumulation_steps:.4f}, lr {lr:.3e}", flush=True)
        iter_num += 1


if __name__ == "__main__":
    main()

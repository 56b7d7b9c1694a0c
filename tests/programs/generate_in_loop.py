"""A tiny GPT-like model learning two-digit addition, whose training loop evaluates it
every few steps by generating the answers token by token: the model's forward runs many
times inside one iteration, from a DataLoader of its own (the shape of minGPT's adder
project, written from scratch). Deterministic on CPU; prints the loss and the score."""

import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

DIGITS = 2  # a + b = c, written as digits; c reversed, as the model emits it
LENGTH = 3 * DIGITS + 1


class Addition(Dataset):
    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        a, b = self.pairs[i]
        text = f"{a:0{DIGITS}d}{b:0{DIGITS}d}" + f"{a + b:0{DIGITS + 1}d}"[::-1]
        digits = [int(c) for c in text]
        x = torch.tensor(digits[:-1])
        y = torch.tensor(digits[1:])
        y[:2 * DIGITS - 1] = -1  # only the answer is learned
        return x, y


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        n = x.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 10, width: int = 32, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(1, LENGTH, width))
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.head = nn.Linear(width, vocab)

    def forward(self, idx, targets=None):
        x = self.tokens(idx) + self.positions[:, :idx.shape[1]]
        logits = self.head(self.blocks(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, new_tokens: int):
        for _ in range(new_tokens):
            logits, _ = self(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


def score(model, dataset) -> int:
    """Correct sums over the dataset, each answer generated digit by digit."""
    model.eval()
    correct = 0
    for x, _ in DataLoader(dataset, batch_size=16):
        prompt = x[:, :2 * DIGITS]
        answer = model.generate(prompt, DIGITS + 1)[:, 2 * DIGITS:].flip(1)  # written reversed
        value = (answer * torch.tensor([100, 10, 1])).sum(1)
        a, b = prompt[:, 0] * 10 + prompt[:, 1], prompt[:, 2] * 10 + prompt[:, 3]
        correct += int((value == a + b).sum())
    model.train()
    return correct


def main(steps: int, evaluate_every: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    pairs = [(a, b) for a in range(100) for b in range(100)]
    order = torch.randperm(len(pairs)).tolist()
    train = Addition([pairs[i] for i in order[:2000]])
    test = Addition([pairs[i] for i in order[2000:2064]])
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    for it in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if it % evaluate_every == 0:  # the trainer's callback, run after the step
            print(f"iter {it}: loss {loss.item():.4f}, test score {score(model, test)}/{len(test)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12, int(sys.argv[2]) if len(sys.argv) > 2 else 5)

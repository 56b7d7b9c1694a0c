"""A small transformer language model whose attention goes NaN on padded batches.

The hand-written attention masks padding keys with -inf before the softmax. Batches are
padded to a fixed length; a sequence that is all padding (an empty line in the corpus)
leaves a query row where every key is -inf, and softmax over all -inf is 0/0 = NaN.
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, pad_mask):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, pad_mask):
        x = x + self.attn(self.norm1(x), pad_mask)
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        pad_mask = tokens == PAD
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.head(x)


def batches(args, generator):
    """Random token lines, right-padded; every `--empty-every`-th line is empty (all padding)."""
    line = 0
    while True:
        tokens = torch.randint(1, args.vocab, (args.batch_size, args.length), generator=generator)
        lengths = torch.randint(2, args.length + 1, (args.batch_size,), generator=generator)
        for row in range(args.batch_size):
            line += 1
            tokens[row, lengths[row]:] = PAD
            if line % args.empty_every == 0:
                tokens[row] = PAD
        yield tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--vocab", type=int, default=100)
    p.add_argument("--empty-every", type=int, default=37)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM(args.vocab, dim=32, heads=4, layers=2, length=args.length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = batches(args, torch.Generator().manual_seed(0))
    for step in range(args.steps):
        tokens = next(data)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()

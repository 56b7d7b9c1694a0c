"""A character model trained the way minGPT's projects do it: a CfgNode tree of
system/data/model/trainer settings with defaults from each class, overridden from the
command line as `--trainer.max_iters=6 --model.n_embd=24`; a Trainer class that runs
iterations and calls back `on_batch_end`, where the callback samples from the model with
`generate()` (forward passes in no_grad, no backward) every few iterations.

Synthetic text (no download). Expected: `trainer.max_iters` optimizer steps (default 6).
"""

import ast
import sys

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset


class CfgNode:
    """Settings as attributes, nested; `merge_from_args` reads `--a.b=value`."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, CfgNode) else v for k, v in self.__dict__.items()}

    def merge_from_args(self, args):
        for arg in args:
            key, val = arg.split("=", 1)
            assert key.startswith("--"), f"expected --key=value, got {arg}"
            *path, leaf = key[2:].split(".")
            node = self
            for part in path:
                node = getattr(node, part)
            try:
                val = ast.literal_eval(val)
            except (ValueError, SyntaxError):
                pass
            assert hasattr(node, leaf), f"{key} is not a config attribute"
            setattr(node, leaf, val)


class CharDataset(Dataset):
    @staticmethod
    def get_default_config():
        return CfgNode(block_size=12)

    def __init__(self, config, text):
        self.config = config
        chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.itos = {i: c for c, i in self.stoi.items()}
        self.vocab_size = len(chars)
        self.data = torch.tensor([self.stoi[c] for c in text])

    def __len__(self):
        return len(self.data) - self.config.block_size

    def __getitem__(self, idx):
        chunk = self.data[idx:idx + self.config.block_size + 1]
        return chunk[:-1], chunk[1:]


class CharModel(nn.Module):
    @staticmethod
    def get_default_config():
        return CfgNode(n_embd=16, vocab_size=None, block_size=None)

    def __init__(self, config):
        super().__init__()
        self.block_size = config.block_size
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        self.rnn = nn.GRU(config.n_embd, config.n_embd, batch_first=True)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx, targets=None):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        logits = self.head(self.rnn(x)[0])
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size:])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


class Trainer:
    @staticmethod
    def get_default_config():
        return CfgNode(max_iters=6, batch_size=8, learning_rate=3e-3, betas=(0.9, 0.95), weight_decay=0.1,
                       grad_norm_clip=1.0, num_workers=0)

    def __init__(self, config, model, train_dataset):
        self.config, self.model, self.train_dataset = config, model, train_dataset
        self.callbacks = {}
        self.iter_num = 0

    def add_callback(self, event, fn):
        self.callbacks.setdefault(event, []).append(fn)

    def run(self):
        config, model = self.config, self.model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=config.betas,
                                           weight_decay=config.weight_decay)
        sampler = torch.utils.data.RandomSampler(self.train_dataset, replacement=True, num_samples=10**6)
        loader = DataLoader(self.train_dataset, sampler=sampler, batch_size=config.batch_size,
                            num_workers=config.num_workers)
        model.train()
        data_iter = iter(loader)
        while True:
            x, y = next(data_iter)
            _, self.loss = model(x, y)
            model.zero_grad(set_to_none=True)
            self.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clip)
            self.optimizer.step()
            for fn in self.callbacks.get("on_batch_end", []):
                fn(self)
            self.iter_num += 1
            if self.iter_num >= config.max_iters:
                break


def get_config():
    return CfgNode(system=CfgNode(seed=3407), data=CharDataset.get_default_config(),
                   model=CharModel.get_default_config(), trainer=Trainer.get_default_config())


if __name__ == "__main__":
    config = get_config()
    config.merge_from_args(sys.argv[1:])
    torch.manual_seed(config.system.seed)
    torch.set_num_threads(1)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    train_dataset = CharDataset(config.data, text)
    config.model.vocab_size = train_dataset.vocab_size
    config.model.block_size = train_dataset.config.block_size
    model = CharModel(config.model)
    trainer = Trainer(config.trainer, model, train_dataset)

    def batch_end_callback(trainer):
        if trainer.iter_num % 3 == 0:
            print(f"iter {trainer.iter_num}: train loss {trainer.loss.item():.5f}")
            model.eval()
            context = torch.tensor([[train_dataset.stoi["t"]]])
            sample = model.generate(context, 10)[0]
            print("".join(train_dataset.itos[int(i)] for i in sample))
            model.train()

    trainer.add_callback("on_batch_end", batch_end_callback)
    trainer.run()

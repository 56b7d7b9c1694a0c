"""A word-level LSTM language model updated by hand, no torch.optim (the shape of
pytorch/examples' word_language_model): batchify a token stream into columns, truncated
BPTT with a detached hidden state, gradient clipping, `p.data.add_(p.grad, alpha=-lr)`,
evaluation after each epoch and the LR divided by 4 when validation stops improving.

Synthetic corpus: a noisy repeating sequence of token ids (no download). Expected:
2 epochs x 12 batches = 24 hand-written updates, the loss falling from about log(48).
"""

import argparse
import math

import torch
import torch.nn as nn

parser = argparse.ArgumentParser(description="tiny LSTM LM, manual SGD")
parser.add_argument("--lr", type=float, default=20.0)
parser.add_argument("--clip", type=float, default=0.25)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch_size", type=int, default=4)
parser.add_argument("--bptt", type=int, default=8)
parser.add_argument("--emsize", type=int, default=16)
parser.add_argument("--nhid", type=int, default=16)
parser.add_argument("--seed", type=int, default=1111)
args = parser.parse_args()
torch.manual_seed(args.seed)
torch.set_num_threads(1)

NTOKENS = 48


def synthetic_stream(length: int) -> torch.Tensor:
    base = torch.arange(length) % 12 * 3 % NTOKENS
    noise = torch.randint(0, NTOKENS, (length,))
    return torch.where(torch.rand(length) < 0.1, noise, base)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, 1)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid = nhid

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return weight.new_zeros(1, bsz, self.nhid), weight.new_zeros(1, bsz, self.nhid)


def get_batch(source, i):
    seq_len = min(args.bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def repackage(hidden):
    return tuple(h.detach() for h in hidden)


train_data = batchify(synthetic_stream(args.batch_size * (12 * args.bptt + 1)), args.batch_size)
val_data = batchify(synthetic_stream(4 * (2 * args.bptt + 1)), 4)
model = RNNModel(NTOKENS, args.emsize, args.nhid)
criterion = nn.CrossEntropyLoss()


def evaluate(source):
    model.eval()
    total, hidden = 0.0, model.init_hidden(source.size(1))
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, args.bptt):
            data, targets = get_batch(source, i)
            output, hidden = model(data, hidden)
            total += len(data) * criterion(output, targets).item()
    return total / (len(source) - 1)


lr = args.lr
best_val_loss = None
for epoch in range(1, args.epochs + 1):
    model.train()
    hidden = model.init_hidden(args.batch_size)
    total_loss = 0.0
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        data, targets = get_batch(train_data, i)
        model.zero_grad()
        hidden = repackage(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        total_loss += loss.item()
    val_loss = evaluate(val_data)
    print(f"| end of epoch {epoch} | lr {lr:.2f} | train loss {total_loss / (batch + 1):.2f} "
          f"| valid loss {val_loss:.2f} | valid ppl {math.exp(val_loss):.2f}")
    if best_val_loss is None or val_loss < best_val_loss:
        best_val_loss = val_loss
    else:
        lr /= 4.0

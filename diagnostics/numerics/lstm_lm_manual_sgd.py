"""A word-level LSTM language model trained with hand-written SGD updates.

The shape of the classic word-language-model examples: an embedding, dropout, an LSTM
and a decoder; the corpus is batchified into columns and cut into BPTT windows; the
hidden state is detached between windows; the update is `p.data.add_(p.grad, alpha=-lr)`
after clipping, no torch.optim. The corpus is generated (a small random Markov chain
over the vocabulary), so the program runs anywhere.

Broken with `--lr 40 --clip 1e9` (a learning rate for clipped gradients, with the clip
effectively off): the loss and the gradient norm grow for a few windows until the LSTM's
gates overflow.
"""

import argparse
import math

import torch
import torch.nn as nn


class RNNLanguageModel(nn.Module):
    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.rnn_type = rnn_type
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        return self.decoder(output).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def make_corpus(ntokens: int, length: int, seed: int) -> torch.Tensor:
    """Token ids from a sparse random Markov chain: there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, ntokens, (ntokens, 3), generator=g)
    ids = [0]
    for _ in range(length - 1):
        ids.append(int(successors[ids[-1], torch.randint(0, 3, (1,), generator=g)]))
    return torch.tensor(ids)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def repackage_hidden(h):
    return tuple(v.detach() for v in h) if isinstance(h, tuple) else h.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description="LSTM language model, manual SGD")
    parser.add_argument("--model", default="LSTM", choices=["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
    parser.add_argument("--ntokens", type=int, default=50)
    parser.add_argument("--emsize", type=int, default=32)
    parser.add_argument("--nhid", type=int, default=32)
    parser.add_argument("--nlayers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=20.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--bptt", type=int, default=12)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--log-interval", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    train_data = batchify(make_corpus(args.ntokens, 1200, args.seed), args.batch_size)
    model = RNNLanguageModel(args.model, args.ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
    criterion = nn.CrossEntropyLoss()
    lr = args.lr
    for epoch in range(1, args.epochs + 1):
        model.train()
        total_loss = 0.0
        hidden = model.init_hidden(args.batch_size)
        for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
            data, targets = get_batch(train_data, i, args.bptt)
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            total_loss += loss.item()
            if batch % args.log_interval == 0 and batch > 0:
                cur_loss = total_loss / args.log_interval
                print(f"| epoch {epoch} | {batch} batches | lr {lr:.2f} | loss {cur_loss:.2f} | "
                      f"ppl {math.exp(min(cur_loss, 50)):.2f}", flush=True)
                total_loss = 0.0
        lr /= 4.0  # anneal, as the examples do when validation stops improving


if __name__ == "__main__":
    main()

"""A trainer with a validate() helper that forgets torch.no_grad() and collects predictions.

The bug: validate() runs the model with gradient recording on and keeps every batch's
logits in a list until the epoch's metric is computed: each kept logit holds its graph
and all the activations saved for a backward that never comes.
Expected: memory.eval_without_no_grad at the model call inside validate().
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)


def validate(model, batches):
    model.eval()
    logits = []
    for x, _ in batches:
        logits.append(model(x))
    model.train()
    return torch.cat(logits).argmax(1)


def main():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(4)]
    for epoch in range(2):
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print("epoch", epoch, "predictions", validate(model, train[:3]).shape[0])


if __name__ == "__main__":
    main()

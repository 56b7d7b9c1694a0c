"""Trains a few steps doing with its objects what real programs do, and prints what it
got: the whole model saved at every step (torch.save, as tutorials do) and an EMA copy
taken by deepcopy after the first step and evaluated; at the end the model pickled,
deep-copied, scripted and exported, the optimizer, the sampler and the GradScaler
pickled. Seeded and on one thread, so two runs print the same digests.

    python save_whole_model.py OUT_DIR    (writes OUT_DIR/model.pt and OUT_DIR/optimizer.pt)
"""

import copy
import hashlib
import io
import pickle
import sys
from pathlib import Path

import torch

STEPS = 6
out = Path(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)


class StorageByValue(pickle.Pickler):
    """Pickles as pickle does, but a tensor's storage by its bytes: torch writes its memory
    address, which differs from one run to the next."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            return bytes, (bytes(obj._untyped_storage.tolist()),)
        return NotImplemented


def digest(obj) -> str:
    """Of `obj`'s pickle: the same object graph, the same digest."""
    buffer = io.BytesIO()
    StorageByValue(buffer).dump(obj)
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                            torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cpu")
data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(0))
loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)

for step, (x, y) in zip(range(STEPS), loader):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.save(model, out / "model.pt")
    torch.save(optimizer, out / "optimizer.pt")
    if step == 0:
        ema = copy.deepcopy(model)  # an EMA model, as timm and many trainers keep one
    with torch.no_grad():
        for kept, live in zip(ema.state_dict().values(), model.state_dict().values()):
            kept.copy_(kept * 0.9 + live * 0.1) if kept.is_floating_point() else kept.copy_(live)
        ema_loss = torch.nn.functional.mse_loss(ema.eval()(x), y)
    print(f"step {step} loss {loss.item():.6f} ema {ema_loss.item():.6f}", flush=True)

model.eval()
x = torch.randn(3, 4)
torch.save(model, out / "model.pt")
pickle.dumps(model), pickle.dumps(optimizer), pickle.dumps(loader.sampler), pickle.dumps(scaler)  # as torch pickles them
print("model pickle", digest(model))
print("ema pickle", digest(ema))
print("deepcopy pickle", digest(copy.deepcopy(model)))
print("state_dict pickle", digest(model.state_dict()))
print("optimizer pickle", digest(optimizer))
print("sampler pickle", digest(loader.sampler))
print("scaler pickle", digest(scaler))
print("scripted equal", torch.equal(torch.jit.script(model)(x), model(x)))
exported = torch.export.export(model, (x,))
print("exported equal", torch.equal(exported.module()(x), model(x)))
print("exported graph", hashlib.sha256(exported.graph_module.code.encode()).hexdigest()[:16])

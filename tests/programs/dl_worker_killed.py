"""A DataLoader worker dies (as under the host OOM-killer) during the second epoch."""
import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset


class Data(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        if i == 13 and torch.utils.data.get_worker_info() is not None and os.environ.get("EPOCH") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.randn(4), torch.randn(1)


model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(2):
    os.environ["EPOCH"] = str(epoch)
    for x, y in DataLoader(Data(), batch_size=4, num_workers=1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

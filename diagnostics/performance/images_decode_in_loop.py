"""Images stored as PNG bytes, decoded and augmented per sample in the training
process (num_workers=0), feeding a small CNN.

Expected: performance.dataloader_bound.
"""

import io

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)
torch.manual_seed(0)


class PngDataset(Dataset):
    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buffer, format="PNG")
            self.blobs.append(buffer.getvalue())

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int):
        image = Image.open(io.BytesIO(self.blobs[index])).convert("RGB")
        image = image.filter(ImageFilter.GaussianBlur(2)).resize((32, 32))
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1), index % 10


loader = DataLoader(PngDataset(24), batch_size=8, shuffle=True, num_workers=0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(16, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(6):
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

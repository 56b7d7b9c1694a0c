"""Seeded training that prints its final loss and a checksum of every parameter."""
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1)),
                                   batch_size=8, shuffle=True)
for epoch in range(3):
    for x, y in data:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
print(repr(loss.item()))
for name, p in model.named_parameters():
    print(name, p.detach().double().sum().item().hex(), p.detach().pow(2).sum().item().hex())

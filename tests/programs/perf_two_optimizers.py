"""A GAN-shaped loop: two optimizers, each stepped once per iteration, built once.

Two optimizer objects for many steps is not an optimizer rebuilt every step.
"""

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
generator, critic = nn.Linear(8, 8), nn.Linear(8, 1)
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
for step in range(40):
    noise = torch.randn(16, 8)
    loss_c = critic(generator(noise).detach()).mean() - critic(torch.randn(16, 8)).mean()
    opt_c.zero_grad()
    loss_c.backward()
    opt_c.step()
    loss_g = -critic(generator(noise)).mean()
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
print("done")

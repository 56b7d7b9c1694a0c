"""A GAN on 2-D points with two optimizers (the shape of pytorch/examples' DCGAN loop):
the discriminator's loss on real and on fake samples backpropagated separately, its
optimizer stepped, then the generator's loss and its optimizer. The settings come from a
yacs CfgNode of defaults merged with `KEY VALUE` pairs from the command line
(`python gan_yacs.py SOLVER.LR_D 0.001`), as detectron-style projects do.

Expected: SOLVER.ITERS steps of the discriminator's optimizer (the first to step, the
primary); the generator's losses recorded apart.
"""

import sys

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

_C = CN()
_C.SEED = 7
_C.MODEL = CN()
_C.MODEL.NOISE_DIM = 4
_C.MODEL.HIDDEN = 16
_C.SOLVER = CN()
_C.SOLVER.ITERS = 10
_C.SOLVER.BATCH_SIZE = 32
_C.SOLVER.LR_D = 2e-3
_C.SOLVER.LR_G = 2e-3
_C.SOLVER.BETA1 = 0.5

cfg = _C.clone()
cfg.merge_from_list(sys.argv[1:])
cfg.freeze()

torch.manual_seed(cfg.SEED)
torch.set_num_threads(1)
netG = nn.Sequential(nn.Linear(cfg.MODEL.NOISE_DIM, cfg.MODEL.HIDDEN), nn.ReLU(), nn.Linear(cfg.MODEL.HIDDEN, 2))
netD = nn.Sequential(nn.Linear(2, cfg.MODEL.HIDDEN), nn.LeakyReLU(0.2), nn.Linear(cfg.MODEL.HIDDEN, 1))
criterion = nn.BCEWithLogitsLoss()
optimizerD = torch.optim.Adam(netD.parameters(), lr=cfg.SOLVER.LR_D, betas=(cfg.SOLVER.BETA1, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=cfg.SOLVER.LR_G, betas=(cfg.SOLVER.BETA1, 0.999))


def real_batch(n):
    angle = torch.rand(n) * 6.2832
    return torch.stack([angle.cos(), angle.sin()], dim=1) + 0.05 * torch.randn(n, 2)


for i in range(cfg.SOLVER.ITERS):
    real = real_batch(cfg.SOLVER.BATCH_SIZE)
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
    # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    errD_real = criterion(netD(real), ones)
    errD_real.backward()
    fake = netG(torch.randn(len(real), cfg.MODEL.NOISE_DIM))
    errD_fake = criterion(netD(fake.detach()), zeros)
    errD_fake.backward()
    optimizerD.step()
    # (2) update G: maximize log(D(G(z)))
    netG.zero_grad()
    errG = criterion(netD(fake), ones)
    errG.backward()
    optimizerG.step()
    print(f"[{i}/{cfg.SOLVER.ITERS}] Loss_D: {(errD_real + errD_fake).item():.4f} Loss_G: {errG.item():.4f}")

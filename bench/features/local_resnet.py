"""A small supervised ResNet trained here on the dataset's labels: the stand-in for ResNet-34.

No ImageNet ResNet weights ship in any registry here (docs/assets.md), so the 'resnet' prior defaults
to this network: three stages of BasicBlocks (widths 32/64/128 by default), cross-entropy with
light augmentation (random resized crop near full scale + horizontal flip).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.features.local_dino import random_resized_crop
from bench.training import check_finite, cosine_lr, log_progress


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or 1x1 projection) shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNet(nn.Module):
    """3x3 stem, then one stage per width; every stage after the first halves the resolution."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.dim = cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, D, h, w); h = R / 2**(len(widths) - 1)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) from the global-average-pooled feature map."""
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class ResNetConfig:
    """Supervised training of the local ResNet; defaults are the CPU preset."""

    steps: int = 1000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: int = 1
    crop_scale: tuple[float, float] = (0.7, 1.0)  # "light": the object stays mostly in frame
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    seed: int = 0
    log_every: int = 100


RESNET_PRESETS = {
    "smoke": ResNetConfig(steps=5, batch=16, warmup=1, widths=(8, 16, 32), log_every=0),
    "cpu": ResNetConfig(),
}


def train_local_resnet(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       cfg: ResNetConfig = ResNetConfig()) -> ResNet:
    """Train the ResNet with cross-entropy on `images` (N, C, R, R) in [-1, 1], on their device; eval mode."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    n, c, r, _ = images.shape
    # channels_last: oneDNN's convolutions run ~25% faster on CPU with NHWC (measured here)
    net = ResNet(c, num_classes, cfg.widths, cfg.blocks).to(images.device, memory_format=torch.channels_last)
    decay = [p for p in net.parameters() if p.ndim >= 2]  # no weight decay on BN and biases
    rest = [p for p in net.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    net.train()
    t0 = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(n, (cfg.batch,), generator=g)
        x = random_resized_crop(images[idx], r, cfg.crop_scale, g).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), labels[idx].to(images.device), label_smoothing=cfg.label_smoothing)
        check_finite(loss, step, "local ResNet")
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        log_progress("local ResNet", step, cfg.steps, loss.item(), t0, cfg.log_every)
    return net.to(memory_format=torch.contiguous_format).eval()  # plain layout for safetensors

"""The distribution-matching gradient against its formula (docs/method.md section 2)."""
import copy

import torch
from torch import nn

from bench.core import dm, flow
from bench.core.mlp import ScoreMLP


class AffineVelocity(nn.Module):
    """v(z, t, y) = a * z + b: simple enough to write the DM gradient by hand."""

    num_classes = 2

    def __init__(self, a, b):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, z, t, y):
        return self.a * z + self.b


def test_dm_gradient_equals_formula():
    real, fake = AffineVelocity(0.5, 0.2), AffineVelocity(-0.3, 0.7)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 2, 2, generator=g).requires_grad_()
    y, t = torch.tensor([0, 1, 0, 1]), torch.tensor([0.1, 0.4, 0.6, 0.9])
    eps = torch.randn(z.shape, generator=g)
    loss = dm.surrogate_loss(z, dm.dm_direction(real, fake, z.detach(), y, t, eps))
    loss.backward()
    # by hand: z_t = t z + (1 - t) eps; x = z_t + (1 - t)(a z_t + b)
    tb = t.reshape(-1, 1, 1, 1)
    zt = tb * z.detach() + (1 - tb) * eps
    x_real = zt + (1 - tb) * (0.5 * zt + 0.2)
    x_fake = zt + (1 - tb) * (-0.3 * zt + 0.7)
    norm = (z.detach() - x_real).abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
    expected = (x_fake - x_real) / norm / z.numel()
    assert torch.allclose(z.grad, expected, atol=1e-6)
    # no gradient reaches either score network
    assert all(p.grad is None for p in [*real.parameters(), *fake.parameters()])


def test_dm_gradient_zero_when_fake_equals_real():
    torch.manual_seed(0)
    real = ScoreMLP(2, 32, 2, num_classes=3)
    for p in real.parameters():
        nn.init.normal_(p, std=0.3)  # non-trivial outputs (the output layer starts at zero)
    fake = copy.deepcopy(real)
    z = torch.randn(64, 2).requires_grad_()
    y = torch.randint(0, 3, (64,))
    for cfg in (1.0, 3.0):
        z.grad = None
        dm.dm_loss(real, fake, z, y, flow.TimeSampler(), cfg=cfg).backward()
        assert torch.count_nonzero(z.grad) == 0


def test_cfg_applies_to_both_nets():
    """With CFG w, each x-prediction uses v_u + w (v_c - v_u) of its own net."""
    real, fake = ScoreMLP(2, 16, 1, num_classes=2), ScoreMLP(2, 16, 1, num_classes=2)
    for p in [*real.parameters(), *fake.parameters()]:
        nn.init.normal_(p, std=0.3)
    z, y, t, eps = torch.randn(8, 2), torch.randint(0, 2, (8,)), torch.rand(8), torch.randn(8, 2)
    got = dm.dm_direction(real, fake, z, y, t, eps, cfg=2.5)
    zt = flow.interpolate(z, eps, t)

    def x_pred(net):
        null = torch.full_like(y, 2)
        v = net(zt, t, null) + 2.5 * (net(zt, t, y) - net(zt, t, null))
        return flow.data_from_velocity(zt, v, t)

    xr, xf = x_pred(real), x_pred(fake)
    want = (xf - xr) / (z - xr).abs().mean(1, keepdim=True)
    assert torch.allclose(got, want, atol=1e-5)

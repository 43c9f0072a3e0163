"""Flow-matching conventions and samplers, checked against a closed-form Gaussian target."""
import pytest
import torch
from torch import nn

from bench.core import flow


class GaussianVelocity(nn.Module):
    """The exact velocity field for data x ~ N(mean, std^2 I) on the linear path (t = 1 clean)."""

    num_classes = 1

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = torch.as_tensor(mean), std

    def forward(self, z, t, y):
        t = t.reshape(-1, 1)
        var = t**2 * self.std**2 + (1 - t) ** 2
        x_hat = self.mean + t * self.std**2 / var * (z - t * self.mean)  # E[x | z_t]
        return (x_hat - z) / (1 - t).clamp_min(1e-4)


def test_conversions_are_consistent():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    t = torch.rand(8, generator=g)
    z_t = flow.interpolate(x, eps, t)
    v = flow.velocity_target(x, eps)
    assert torch.allclose(flow.data_from_velocity(z_t, v, t), x, atol=1e-6)
    assert torch.allclose(flow.noise_from_velocity(z_t, v, t), eps, atol=1e-6)
    assert torch.allclose(flow.interpolate(x, eps, torch.ones(8)), x)   # t = 1 is clean
    assert torch.allclose(flow.interpolate(x, eps, torch.zeros(8)), eps)  # t = 0 is noise


def test_time_sampler_range_and_shift():
    g = torch.Generator().manual_seed(0)
    t = flow.TimeSampler(0.2, 0.7)(10000, generator=g)
    assert t.min() >= 0.2 and t.max() <= 0.7
    u = torch.linspace(0, 1, 11)
    assert torch.equal(flow.shift_time(u, 1.0), u)
    shifted = flow.shift_time(u, 3.0)
    assert (shifted[1:-1] < u[1:-1]).all()  # shift > 1 moves times towards noise
    assert shifted[0] == 0 and shifted[-1] == 1


def _samples(sampler, **kw):
    net = GaussianVelocity([1.5, -0.5], 0.5)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(20000, 2, generator=g)
    y = torch.zeros(20000, dtype=torch.long)
    return sampler(net, noise, y, **kw)


def test_ode_sampler_recovers_gaussian():
    x = _samples(flow.sample_ode, steps=100)
    assert torch.allclose(x.mean(0), torch.tensor([1.5, -0.5]), atol=0.02)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 0.5]), atol=0.02)


def test_sde_sampler_recovers_gaussian():
    x = _samples(flow.sample_sde, steps=200, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x.mean(0), torch.tensor([1.5, -0.5]), atol=0.03)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 0.5]), atol=0.03)


class TwoHeads(nn.Module):
    """v = a for real labels and b for the null label: makes CFG's arithmetic visible."""

    num_classes = 3

    def forward(self, z, t, y):
        cond = (y != self.num_classes).float().reshape(-1, 1)
        return cond * (z + 1.0) + (1 - cond) * (2 * z)


def test_cfg_weight_one_is_conditional_and_weight_w_extrapolates():
    net = TwoHeads()
    z, t, y = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(flow.guided_velocity(net, z, t, y, 1.0), net(z, t, y))
    v_c, v_u = z + 1.0, 2 * z
    assert torch.allclose(flow.guided_velocity(net, z, t, y, 4.0), v_u + 4.0 * (v_c - v_u))


def test_label_dropout_rate():
    y = torch.zeros(20000, dtype=torch.long)
    d = flow.drop_labels(y, 0.1, 7, generator=torch.Generator().manual_seed(0))
    assert abs((d == 7).float().mean().item() - 0.1) < 0.01
    assert set(d.unique().tolist()) == {0, 7}


def test_grad_clip_zero_means_no_clipping():
    from bench.training import clip_gradients

    w = torch.nn.Parameter(torch.ones(3))
    (w * torch.tensor([3.0, 4.0, 0.0])).sum().backward()
    assert float(clip_gradients([w], 0.0)) == pytest.approx(5.0) and torch.equal(w.grad, torch.tensor([3.0, 4.0, 0.0]))
    assert float(clip_gradients([w], 1.0)) == pytest.approx(5.0) and torch.allclose(w.grad, torch.tensor([0.6, 0.8, 0.0]))

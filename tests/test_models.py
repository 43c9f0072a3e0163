"""The score networks: shapes, adaLN-zero init, conditioning, gradients, size table, meta build."""
import pytest
import torch

from bench.core.dit import DIT_SIZES, DiT, apply_rope, build_dit, grid_angles
from bench.core.flow import TimeSampler, flow_matching_loss
from bench.core.mlp import ScoreMLP
from bench.errors import UserError

NUM_CLASSES = 5


def small_dit(pos="rope", patch_size=1, input_size=4, channels=3):
    return DiT(input_size=input_size, in_channels=channels, num_classes=NUM_CLASSES, depth=2,
               hidden=32, heads=2, patch_size=patch_size, pos=pos)


def perturb(net, std=0.1):
    """Move every weight off its init (adaLN-zero leaves most gradients zero at step one)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def inputs(shape, n=4):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, *shape, generator=g)
    t = torch.rand(n, generator=g)
    y = torch.tensor([0, 1, NUM_CLASSES, 2])[:n]  # includes the null label
    return z, t, y


# --------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", ["rope", "sincos"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_dit_shape_and_zero_init(pos, patch_size):
    net = small_dit(pos, patch_size)
    z, t, y = inputs((3, 4, 4))
    v = net(z, t, y)
    assert v.shape == z.shape
    assert torch.all(v == 0), "adaLN-zero: an untrained net predicts zero velocity"
    assert net.num_classes == NUM_CLASSES


@pytest.mark.parametrize("pos", ["rope", "sincos"])
def test_dit_label_and_time_change_output(pos):
    net = perturb(small_dit(pos)).eval()
    z, t, _ = inputs((3, 4, 4), n=2)
    v0 = net(z, t, torch.tensor([0, 0]))
    v1 = net(z, t, torch.tensor([1, NUM_CLASSES]))
    assert not torch.allclose(v0, v1, atol=1e-5)
    assert not torch.allclose(v0, net(z, t.flip(0), torch.tensor([0, 0])), atol=1e-5)


@pytest.mark.parametrize("pos", ["rope", "sincos"])
def test_dit_positions_break_permutation_symmetry(pos):
    """Without positions a transformer is permutation-equivariant over tokens; ours must not be."""
    net = perturb(small_dit(pos)).eval()
    z, t, y = inputs((3, 4, 4))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    zp = z.flatten(2)[..., perm].view_as(z)
    vp = net(z, t, y).flatten(2)[..., perm].view_as(z)
    assert not torch.allclose(net(zp, t, y), vp, atol=1e-5)


def test_rope_depends_on_relative_position_only():
    d, h, w = 16, 5, 5
    ang = grid_angles(h, w, d, "cpu")
    cos, sin = ang.cos(), ang.sin()
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)
    q, k = q.expand(1, 1, h * w, d), k.expand(1, 1, h * w, d)  # same vector at every token
    logits = apply_rope(q, cos, sin)[0, 0] @ apply_rope(k, cos, sin)[0, 0].T  # (h*w, h*w)
    idx = lambda r, c: r * w + c  # noqa: E731
    # (0,1)->(2,0) and (1,3)->(3,2) share the offset (+2, -1)
    assert torch.allclose(logits[idx(0, 1), idx(2, 0)], logits[idx(1, 3), idx(3, 2)], atol=1e-5)
    assert not torch.allclose(logits[idx(0, 1), idx(2, 0)], logits[idx(0, 1), idx(0, 2)], atol=1e-3)


def test_dit_gradient_reaches_every_parameter():
    net = perturb(small_dit(patch_size=2))
    x, _, y = inputs((3, 4, 4))
    loss = flow_matching_loss(net, x, y, TimeSampler(), generator=torch.Generator().manual_seed(2))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("input_size,channels,patch", [(16, 32, 1), (32, 4, 2)])
def test_xl_on_meta_matches_dit_xl_parameter_count(input_size, channels, patch):
    with torch.device("meta"):
        net = build_dit("XL", (channels, input_size, input_size), 1000, patch_size=patch)
    assert all(p.is_meta for p in net.parameters())
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 675e6 - 1) < 0.03, n  # DiT-XL/2: 675M (Peebles & Xie 2023, Table 4)


def test_tiny_size_builds_and_runs():
    net = build_dit("T", (4, 8, 8), NUM_CLASSES)
    z, t, y = inputs((4, 8, 8), n=2)
    assert net(z, t, y).shape == z.shape


def test_unknown_size_lists_valid_sizes():
    with pytest.raises(UserError, match="Did you mean 'XL'.*Valid DiT sizes: B, L, P, S, T, XL"):
        build_dit("XXL", (32, 16, 16), 1000)
    assert set(DIT_SIZES) == {"P", "T", "S", "B", "L", "XL"}


def test_unknown_position_encoding():
    with pytest.raises(UserError, match="rope, sincos"):
        small_dit(pos="learned")


# --------------------------------------------------------------------------------------------
# ScoreMLP
# --------------------------------------------------------------------------------------------
def test_mlp_shape_zero_init_and_conditioning():
    net = ScoreMLP(2, hidden=32, depth=2, num_classes=NUM_CLASSES)
    z, t, y = inputs((2,))
    assert net.num_classes == NUM_CLASSES
    v = net(z, t, y)
    assert v.shape == z.shape and torch.all(v == 0)
    perturb(net)
    assert not torch.allclose(net(z, t, torch.zeros_like(y)), net(z, t, torch.ones_like(y)), atol=1e-5)


def test_mlp_gradient_reaches_every_parameter():
    net = perturb(ScoreMLP(2, hidden=32, depth=2, num_classes=NUM_CLASSES))
    x, _, y = inputs((2,))
    flow_matching_loss(net, x, y, TimeSampler(), generator=torch.Generator().manual_seed(2)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"

"""The locally trained feature networks: shapes, determinism, loud failure; kNN and probe sanity."""
from dataclasses import replace

import pytest
import torch

from bench.features.kl_vae import KLVAE_PRESETS, train_kl_vae
from bench.features.knn import knn_accuracy, linear_probe_accuracy
from bench.features.local_dino import DINO_PRESETS, train_local_dino
from bench.features.local_resnet import RESNET_PRESETS, train_local_resnet


def toy_images(n: int = 200, channels: int = 1, classes: int = 4, seed: int = 0):
    """Class-structured 32x32 images in [-1, 1]: a bright square in a class-specific quadrant, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.full((n, channels, 32, 32), -1.0)
    for c in range(classes):
        r, q = divmod(c % 4, 2)
        x[y == c, :, 4 + 16 * r:12 + 16 * r, 4 + 16 * q:12 + 16 * q] = 1.0
    return (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


def _train(kind: str, x: torch.Tensor, y: torch.Tensor, **over):
    if kind == "dino":
        return train_local_dino(x, replace(DINO_PRESETS["smoke"], **over))
    if kind == "resnet":
        return train_local_resnet(x, y, 4, replace(RESNET_PRESETS["smoke"], **over))
    return train_kl_vae(x, replace(KLVAE_PRESETS["smoke"], **over))


def _outputs(kind: str, net, x: torch.Tensor) -> dict:
    with torch.no_grad():
        if kind == "dino":
            return {"pooled": net(x), "tokens": net.forward_tokens(x)}
        if kind == "resnet":
            return {"logits": net(x), "features": net.forward_features(x)}
        mean, logvar = net.encode(x)
        return {"mean": mean, "logvar": logvar, "rec": net.decode(mean)}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["dino", "resnet", "vae"])
def test_trainer_shapes_and_eval_mode(kind, channels):
    x, y = toy_images(channels=channels)
    net = _train(kind, x, y)
    assert not net.training
    out = _outputs(kind, net, x[:5])
    cfg_dino, cfg_res, cfg_vae = DINO_PRESETS["smoke"], RESNET_PRESETS["smoke"], KLVAE_PRESETS["smoke"]
    expected = {
        "dino": {"pooled": (5, cfg_dino.dim), "tokens": (5, 64, cfg_dino.dim)},  # patch 4: 8x8 tokens
        "resnet": {"logits": (5, 4), "features": (5, cfg_res.widths[-1], 8, 8)},
        "vae": {"mean": (5, cfg_vae.latent_ch, 8, 8), "logvar": (5, cfg_vae.latent_ch, 8, 8),
                "rec": (5, channels, 32, 32)},
    }[kind]
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dino", "resnet", "vae"])
def test_trainer_is_deterministic_given_seed(kind):
    x, y = toy_images()
    a, b, c = _train(kind, x, y, seed=3), _train(kind, x, y, seed=3), _train(kind, x, y, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # the seed matters
    oa, ob = _outputs(kind, a, x[:8]), _outputs(kind, b, x[:8])
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


@pytest.mark.parametrize("kind", ["dino", "resnet", "vae"])
def test_non_finite_loss_raises_naming_the_step(kind):
    x, y = toy_images(n=32)
    x[:] = float("nan")
    with pytest.raises(RuntimeError, match=r"non-finite loss .* at step 0"):
        _train(kind, x, y)


def test_huge_learning_rate_raises():
    x, y = toy_images(n=64)
    with pytest.raises(RuntimeError, match=r"non-finite loss .* at step \d+"):
        _train("vae", x, y, lr=1e12, warmup=1, steps=50, grad_clip=1e30)


def test_knn_perfectly_separable_is_one():
    g = torch.Generator().manual_seed(0)
    ytr, yte = torch.arange(300) % 10, torch.arange(100) % 10
    centers = torch.eye(10) * 10
    ftr = centers[ytr] + 0.1 * torch.randn(300, 10, generator=g)
    fte = centers[yte] + 0.1 * torch.randn(100, 10, generator=g)
    assert knn_accuracy(ftr, ytr, fte, yte, k=20) == 1.0
    assert linear_probe_accuracy(ftr, ytr, fte, yte) == 1.0


def test_knn_random_features_are_near_chance():
    g = torch.Generator().manual_seed(0)
    ftr, fte = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    ytr, yte = torch.randint(10, (2000,), generator=g), torch.randint(10, (1000,), generator=g)
    assert abs(knn_accuracy(ftr, ytr, fte, yte, k=20) - 0.1) < 0.04

"""The prior registry and the analytic priors' claims (moments, class ties)."""
import textwrap

import pytest
import torch

import priors
from bench.errors import UserError
from priors.base import Prior, PriorInfo, PriorSettings
from priors.registry import get_prior, register_prior


def test_registry_has_the_study_priors():
    assert {"gaussian", "gmm"} <= set(priors.available())


def test_unknown_prior_lists_available_and_suggests():
    with pytest.raises(UserError, match="Did you mean 'gaussian'.*Valid priors: .*gmm"):
        get_prior("gausian")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register_prior(type("Again", (Prior,), {"info": get_prior("gaussian").info}))


def test_user_prior_loads_by_module_and_class(tmp_path, monkeypatch, data):
    (tmp_path / "my_prior.py").write_text(textwrap.dedent("""
        import torch
        from priors.base import Prior, PriorInfo
        class Uniform(Prior):
            info = PriorInfo(name="uniform", description="U[-1, 1]", paper_row="-",
                             version="1", class_conditional=False)
            def _build(self, cache):
                self._provenance = {"source": "analytic"}
            def sample(self, n, generator=None):
                z = torch.rand(n, *self.latent_shape, generator=generator) * 2 - 1
                return z, self._labels(n, generator)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = get_prior("my_prior:Uniform")
    z, y = cls(PriorSettings(), data).build().sample(10)
    assert z.shape == (10, 4, 8, 8) and z.abs().max() <= 1
    with pytest.raises(UserError, match="is not a valid prior: the class subclasses priors.base.Prior"):
        get_prior("textwrap:dedent")
    with pytest.raises(UserError, match="Could not load"):
        get_prior("no_such_module_xyz:Thing")


def test_gaussian_has_unit_moments(data):
    p = get_prior("gaussian")(PriorSettings(latent_channels=4, latent_size=4), data).build()
    z, y = p.sample(20000, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 4, 4, 4)
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.01
    assert set(y.unique().tolist()) <= set(range(data.num_classes))


def test_gmm_components_and_moments(data):
    p = get_prior("gmm")(PriorSettings(latent_channels=2, latent_size=4), data).build()
    z, y = p.sample(40000, torch.Generator().manual_seed(0))
    assert abs(z.var().item() - 1) < 0.1  # aggregate variance ~1 by construction
    for k in range(3):
        zk = z[y % 10 == k]
        assert torch.allclose(zk.mean(0), p.means[k], atol=0.1)             # mean of component k
        assert abs(zk.std(0).mean().item() - p.component_std) < 0.02        # its std
    assert p.provenance()["components"] == 10 and p.info.class_conditional


def test_bad_feature_source_is_rejected():
    with pytest.raises(ValueError, match="must be one of pretrained, local, auto"):
        PriorSettings(features="hub")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    from bench.cache import Cache
    return Cache(tmp_path_factory.mktemp("cache"))


STRUCTURAL = ("samples have the latent shape", "mean of all", "variance of", "component",
              "outside the class subset")


@pytest.mark.slow
@pytest.mark.parametrize("name", priors.available())
def test_every_registered_prior(name, data, shared_cache):
    """The same contract for every prior: builds, samples, verifies its claims, records provenance."""
    settings = PriorSettings(feature_size="smoke", features="local", latent_channels=4, latent_size=4)
    p = get_prior(name)(settings, data).build(shared_cache)
    z, y = p.sample(64, torch.Generator().manual_seed(0))
    assert z.shape == (64, 4, 4, 4) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert y.shape == (64,) and y.dtype == torch.long and 0 <= y.min() and y.max() < data.num_classes
    rows = p.checks(torch.Generator().manual_seed(1))
    assert rows and all(set(r) == {"claim", "value", "expected", "passed"} for r in rows)
    # claims about the construction itself must hold at any training budget
    assert all(r["passed"] for r in rows if r["claim"].startswith(STRUCTURAL) or "noised" in r["claim"])
    prov = p.provenance()
    assert prov["info"]["name"] == name
    assert prov.get("feature_source", prov.get("source")) in ("local", "analytic")
    # the encoder start (bench/dmvae/start.py) distils reference_latents where the prior has an image encoder
    x = data.train.images[:4]
    if p.has_image_encoder:
        ref = p.reference_latents(x)
        assert ref.shape == (4, 4, 4, 4) and torch.isfinite(ref).all()
        assert torch.equal(ref, p.reference_latents(x))  # a frozen encoder: the same latents every call
    else:
        with pytest.raises(NotImplementedError, match="no image encoder"):
            p.reference_latents(x)


def test_which_priors_have_an_image_encoder():
    """Section 3.3: the feature and autoencoder priors start the DM stage from their reference encoder;
    the analytic priors and text (latents from captions) from a plain AE."""
    has = {name: get_prior(name).has_image_encoder for name in priors.available()}
    assert has == {"gaussian": False, "gmm": False, "text": False, "dino": True, "resnet": True,
                   "subdino": True, "noise": True, "vae": True}


def test_cli_priors_list_and_check(capsys, tmp_path):
    import json

    from bench.cli import main
    assert main(["priors"]) == 0
    listing = capsys.readouterr().out
    for name in ("gaussian", "gmm", "text", "resnet", "dino", "subdino", "noise", "vae"):
        assert f"\n{name} " in "\n" + listing
    out = tmp_path / "check.json"
    assert main(["priors", "--check", "--priors", "gaussian,gmm", "--dataset", "synthetic",
                 "--limit", "50", "--resolution", "16", "--json", str(out),
                 "--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "pass  variance of all coordinates" in text and "FAIL" not in text
    report = json.loads(out.read_text())["priors"]
    assert report["gaussian"]["status"] == "ok" and report["gmm"]["checks"]
    assert main(["priors", "--priors", "gausian"]) == 2
    assert "Did you mean 'gaussian'" in capsys.readouterr().err

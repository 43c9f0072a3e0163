"""Analytic priors: no feature network, nothing to cache (Table 1 rows Gaussian and GMM)."""
from __future__ import annotations

import math

import torch

from priors.base import Prior, PriorInfo, check
from priors.registry import register_prior


@register_prior
class Gaussian(Prior):
    """N(0, I) on the latent shape; labels carry no information about z."""

    info = PriorInfo(name="gaussian", description="standard normal N(0, I) on the latent grid",
                     paper_row="Gaussian", version="1", class_conditional=False)

    def _build(self, cache) -> None:
        self._provenance = {"source": "analytic", "mean": 0.0, "std": 1.0}

    def sample(self, n, generator=None):
        z = torch.randn(n, *self.latent_shape, generator=generator)
        return z, self._labels(n, generator)

    def checks(self, generator):
        z, _ = self.sample(8192, generator)
        mean, var = z.mean().item(), z.var().item()
        return super().checks(generator) + [
            check("mean of all coordinates", mean, "0 +- 0.01", abs(mean) < 0.01),
            check("variance of all coordinates", var, "1 +- 0.01", abs(var - 1) < 0.01)]


@register_prior
class GMM(Prior):
    """A K-component isotropic Gaussian mixture on the latent shape (K = 10 by default).

    How the components are chosen (the paper does not say): the means m_k are i.i.d. draws
    m_k ~ N(0, (1 - s^2) I) from a generator seeded with the prior's seed, and every component
    has std s = 1/sqrt(2); the aggregate then has mean ~0 and per-dimension variance ~1, like the
    Gaussian row, so the two differ only in being multi-modal. Component k is tied to class
    k mod K, which makes the prior class-conditional: sample() draws a label from the data's
    class frequencies and z from that label's component.
    """

    info = PriorInfo(name="gmm", description="10-component isotropic Gaussian mixture, one "
                     "component per class (mod 10)", paper_row="GMM", version="1",
                     class_conditional=True)
    component_std = 1 / math.sqrt(2)

    def _build(self, cache) -> None:
        k = self.settings.gmm_components
        g = torch.Generator().manual_seed(10_000 + self.settings.seed)
        spread = math.sqrt(1 - self.component_std**2)
        self.means = spread * torch.randn(k, *self.latent_shape, generator=g)  # (K, C, h, w)
        self._provenance = {"source": "analytic", "components": k,
                            "component_std": self.component_std, "mean_std": spread,
                            "means_seed": 10_000 + self.settings.seed,
                            "class_to_component": f"label mod {k}"}

    def sample(self, n, generator=None):
        y = self._labels(n, generator)
        comp = y % self.settings.gmm_components
        eps = torch.randn(n, *self.latent_shape, generator=generator)
        return self.means[comp] + self.component_std * eps, y

    def checks(self, generator):
        z, y = self.sample(8192, generator)
        comp = y % self.settings.gmm_components
        err = max((z[comp == k].mean(0) - self.means[k]).abs().mean().item()
                  for k in comp.unique().tolist())
        std = torch.stack([z[comp == k].std(0).mean() for k in comp.unique().tolist()]).mean().item()
        return super().checks(generator) + [
            check("mean abs error of component means", err, "< 0.05", err < 0.05),
            check("mean per-component std", std, f"{self.component_std:.4f} +- 0.02",
                  abs(std - self.component_std) < 0.02),
            check("aggregate variance", z.var().item(), "1 +- 0.1", abs(z.var().item() - 1) < 0.1)]

"""Latent-structure metrics: how well class identity is organised in a latent space (paper Fig. 4).

All take latents (N, ...) flattened to (N, D) and labels (N,); every random choice (train/test
split, silhouette subsample, t-SNE) comes from the given seed, so results are deterministic.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.features.knn import knn_accuracy, linear_probe_accuracy

SETTINGS = dict(test_fraction=0.2, knn_k=20, knn_temperature=0.07, probe_max_iter=200,
                silhouette_n=2000, silhouette_metric="cosine",  # cosine, like the kNN, ignores latent scale
                tsne_perplexity=30.0, tsne_init="pca", tsne_max_iter=1000)


def _flat(latents, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(latents).flatten(1).double()
    y = torch.as_tensor(labels).long()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} latents but {len(y)} labels")
    return x, y


def split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed train/test index split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def knn_class_accuracy(latents, labels, seed: int = 0, test_fraction: float = SETTINGS["test_fraction"],
                       k: int = SETTINGS["knn_k"]) -> float:
    """Cosine kNN top-1 accuracy on a fixed-seed held-out split (DINO's weighted vote)."""
    x, y = _flat(latents, labels)
    tr, te = split(len(x), test_fraction, seed)
    return knn_accuracy(x[tr], y[tr], x[te], y[te], k=k, temperature=SETTINGS["knn_temperature"])


def linear_probe(latents, labels, seed: int = 0, test_fraction: float = SETTINGS["test_fraction"]) -> float:
    """Logistic-regression accuracy on a fixed-seed held-out split (standardised latents)."""
    x, y = _flat(latents, labels)
    tr, te = split(len(x), test_fraction, seed)
    return linear_probe_accuracy(x[tr], y[tr], x[te], y[te], max_iter=SETTINGS["probe_max_iter"])


def silhouette(latents, labels, seed: int = 0, n: int = SETTINGS["silhouette_n"],
               metric: str = SETTINGS["silhouette_metric"]) -> float:
    """Silhouette score of the class labels on a fixed-seed subsample of at most n latents."""
    from sklearn.metrics import silhouette_score  # sklearn is slow to import; only here

    x, y = _flat(latents, labels)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return float(silhouette_score(x[idx].numpy(), y[idx].numpy(), metric=metric))


def structure_metrics(latents, labels, seed: int = 0) -> dict:
    """kNN accuracy, linear-probe accuracy and silhouette, with the settings that produced them.

    With a single class (e.g. the subdino prior's reference latents) class structure is undefined:
    the three values are None, with a note, instead of a trivial 1.0 or a solver error.
    """
    if len(torch.unique(torch.as_tensor(labels))) < 2:
        return {"knn_accuracy": None, "linear_probe_accuracy": None, "silhouette": None, "n": len(latents),
                "seed": seed, "note": "one class only: class structure is undefined", "settings": dict(SETTINGS)}
    return {"knn_accuracy": knn_class_accuracy(latents, labels, seed),
            "linear_probe_accuracy": linear_probe(latents, labels, seed),
            "silhouette": silhouette(latents, labels, seed), "n": len(latents), "seed": seed,
            "settings": dict(SETTINGS)}


def tsne_embedding(latents, labels, n_per_class: int = 100, seed: int = 0,
                   perplexity: float = SETTINGS["tsne_perplexity"]) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of up to n_per_class latents of each class -> (M, 2) float64 and labels (M,)."""
    from sklearn.manifold import TSNE

    x, y = _flat(latents, labels)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y):  # sorted class order, fixed-seed pick inside each class
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]].sort().values)
    keep = torch.cat(keep)
    # sklearn needs perplexity < M; shrink it for tiny sets instead of failing.
    perp = min(perplexity, (len(keep) - 1) / 3)
    emb = TSNE(n_components=2, perplexity=perp, init=SETTINGS["tsne_init"], learning_rate="auto",
               max_iter=SETTINGS["tsne_max_iter"], random_state=seed,
               n_jobs=1,  # OpenMP threads crawl on shared CPUs; one thread is also the same on every machine
               ).fit_transform(x[keep].numpy())
    return emb.astype(np.float64), y[keep].numpy()

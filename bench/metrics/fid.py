"""Image-quality metrics on Inception pool3 features: FID, KID, precision/recall.

Pipeline: images -> `inception_features` (N, 2048) -> `stats` (mu, sigma) -> `frechet_distance`.
Reference (real-data) features and statistics are cached by the sha256 of the uint8 image bytes,
the converted weights' sha256 and the resize convention, so they never go stale under a name.
Conventions (all in `evaluation_settings`): images are quantised to uint8 first, as if saved to
PNG; grey images are replicated to RGB; the TF1.x bilinear resize to 299x299 happens inside
torch-fidelity's extractor; the network runs in fp32, everything after it in float64.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.linalg
import torch

from bench.cache import Cache, content_key
from bench.metrics import inception

FEATURES_VERSION = 1  # bump when to_uint8 or the feature layer changes
KID_DEFAULTS = dict(subsets=100, subset_size=1000, degree=3, coef0=1.0)  # Binkowski et al. 2018
KID_SUBSET_RULE = ("subset size = min(subset_size, N // 2), N = min(len(x), len(y)); "
                   "subsets drawn without replacement")
PR_K = 3  # Kynkaanniemi et al. 2019


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1|3, H, W) uint8, or float in [-1, 1] -> (N, 3, H, W) uint8 (round-to-nearest, clamped)."""
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        # Generated images are scored as they would be saved: quantised to 8 bits.
        x = ((x.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> RGB by replication


@torch.inference_mode()
def inception_features(images: torch.Tensor, batch: int = 50, cache: Cache | None = None,
                       progress=None) -> torch.Tensor:
    """Pool3 features (N, 2048) float64 of images (N, C, H, W), uint8 or float in [-1, 1].

    `progress` (bench/progress.py Progress) is told of every batch done.
    """
    net = inception.load_extractor(cache)
    x = to_uint8(images)
    out = []
    for i in range(0, len(x), batch):
        out.append(net(x[i:i + batch].contiguous())[0].double())
        if progress is not None:
            progress.update(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0, 2048, dtype=torch.float64)


def stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) in float64 (np.cov's convention)."""
    f = torch.as_tensor(feats).double()
    if len(f) < 2:
        raise ValueError("need at least 2 samples for a covariance")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64, guarded against a bad sqrtm."""
    mu1, mu2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    s1, s2 = (np.asarray(s, dtype=np.float64) for s in (sigma1, sigma2))
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Near-singular product (e.g. N < D): offset both covariances, as pytorch-fid does.
        offset = np.eye(len(s1)) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"Frechet distance: sqrtm has a large imaginary part ({imag:.3g})")
        covmean = covmean.real  # tiny imaginary parts are round-off
    if not np.isfinite(covmean).all():
        raise ValueError("Frechet distance: sqrtm is not finite even with an offset")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The Frechet distance of two feature sets (N, D), exact for N <= D, without a D x D sqrtm.

    With centred features A (n1, D), B (n2, D) and S1 = A'A / (n1 - 1), S2 = B'B / (n2 - 1), the
    non-zero eigenvalues of S1 S2 are the squared singular values of A B' / sqrt((n1 - 1)(n2 - 1)),
    so Tr (S1 S2)^(1/2) is that matrix's nuclear norm: an n1 x n2 SVD instead of a 2048 x 2048
    sqrtm (which takes ~10 s on one core and is ill-conditioned when N < D). float64 throughout.
    """
    a, b = (torch.as_tensor(f).double() for f in (f1, f2))
    mu1, mu2 = a.mean(0), b.mean(0)
    a, b = a - mu1, b - mu2
    c1, c2 = len(a) - 1, len(b) - 1
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(c1 * c2)
    return float((mu1 - mu2).pow(2).sum() + a.pow(2).sum() / c1 + b.pow(2).sum() / c2 - 2 * cross)


def frechet_distance_to_stats(feats: torch.Tensor, mu, sigma) -> float:
    """The Frechet distance of features (N, D) to stored statistics (mu, sigma), exact for N <= D.

    With centred features A and S1 = A'A / (N - 1), the non-zero eigenvalues of S1 S2 are those of
    the symmetric N x N matrix A S2 A' / (N - 1), so Tr (S1 S2)^(1/2) is the sum of their square
    roots (negative round-off clipped to 0). For N > D the usual statistics form is used.
    """
    f = torch.as_tensor(feats).double()
    mu2, s2 = torch.as_tensor(np.asarray(mu)).double(), torch.as_tensor(np.asarray(sigma)).double()
    if len(f) > f.shape[1]:
        m1, s1 = stats(f)
        return frechet_distance(m1, s1, mu2, s2)
    m1 = f.mean(0)
    a = f - m1
    c = len(f) - 1
    small = a @ s2 @ a.T / c
    cross = torch.linalg.eigvalsh((small + small.T) / 2).clamp(min=0).sqrt().sum()
    return float((m1 - mu2).pow(2).sum() + a.pow(2).sum() / c + torch.trace(s2) - 2 * cross)


def fid_against_reference(feats: torch.Tensor, ref: dict) -> float:
    """FID of features against reference() statistics: the feature form when either set has at
    most D samples (exact there), else the usual statistics form."""
    if min(len(feats), len(ref["features"])) <= feats.shape[1]:
        return frechet_distance_features(feats, ref["features"])
    mu, sigma = stats(feats)
    return frechet_distance(mu, sigma, ref["mu"], ref["sigma"])


def kid(feats1, feats2, subsets: int = KID_DEFAULTS["subsets"], subset_size: int = KID_DEFAULTS["subset_size"],
        seed: int = 0) -> dict:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, mean and std over subsets.

    Each of `subsets` draws takes m rows of each set without replacement, with
    m = min(subset_size, N // 2) and N = min(len(x), len(y)) (KID_SUBSET_RULE). Capping m at N // 2
    makes the subsets differ from one another, so kid_std is a real spread over subsets; with
    m = N every subset would be the whole set and kid_std only round-off. With the default
    subset_size 1000 the usual size (Binkowski et al. 2018) is kept once N >= 2000. Needs N >= 4
    (m >= 2 for the unbiased within-set terms) and subset_size >= 2; raises ValueError otherwise.

    Returns kid_mean, kid_std (population std over subsets), subsets, subset_size (the m used) and
    rule (how m was chosen).
    """
    x, y = (np.asarray(torch.as_tensor(f).double()) for f in (feats1, feats2))
    n = min(len(x), len(y))
    if n < 4:
        raise ValueError(f"KID needs at least 4 samples per set (subsets of N // 2 >= 2), got "
                         f"{len(x)} and {len(y)}")
    if subset_size < 2:
        raise ValueError(f"KID subset_size must be at least 2, got {subset_size}")
    m = min(subset_size, n // 2)
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + KID_DEFAULTS["coef0"]) ** KID_DEFAULTS["degree"]
                         for p, q in ((a, a), (b, b), (a, b)))
        # Unbiased: drop the diagonals of the within-set kernels.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals.append(within - 2 * kxy.mean())
    vals = np.asarray(vals)
    return {"kid_mean": float(vals.mean()), "kid_std": float(vals.std()), "subsets": subsets, "subset_size": m,
            "rule": KID_SUBSET_RULE}


def _kth_nn_radius(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the self-distance 0 is skipped)."""
    return torch.cat([torch.cdist(f[i:i + chunk], f).topk(k + 1, largest=False).values[:, k]
                      for i in range(0, len(f), chunk)])


def _inside(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Share of query rows inside at least one ball (centre, radius)."""
    hits = [(torch.cdist(query[i:i + chunk], centres) <= radii).any(1) for i in range(0, len(query), chunk)]
    return torch.cat(hits).double().mean()


def precision_recall(feats_real, feats_fake, k: int = PR_K, chunk: int = 1024) -> dict:
    """Improved precision/recall (Kynkaanniemi et al. 2019): kNN-ball manifolds of each set."""
    real, fake = (torch.as_tensor(f).double() for f in (feats_real, feats_fake))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    r_real, r_fake = _kth_nn_radius(real, k, chunk), _kth_nn_radius(fake, k, chunk)
    return {"precision": float(_inside(fake, real, r_real, chunk)),  # fakes on the real manifold
            "recall": float(_inside(real, fake, r_fake, chunk)), "k": k}


def reference(images: torch.Tensor, cache: Cache | None = None, batch: int = 50) -> dict[str, torch.Tensor]:
    """Features, mu and sigma of real images, cached by their uint8 bytes + weights + resize."""
    cache = cache or Cache()
    x = to_uint8(images).contiguous()
    data_sha = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    weights_sha = inception.weights_record(cache)["converted_sha256"]
    key = content_key("fid_reference", data_sha, list(x.shape), weights_sha, inception.RESIZE, FEATURES_VERSION)
    hit = cache.load("fid_reference", key)
    if hit is not None:
        return hit[0]
    feats = inception_features(x, batch, cache)
    mu, sigma = stats(feats)
    tensors = {"features": feats, "mu": mu, "sigma": sigma}
    cache.save("fid_reference", key, tensors, {"data_sha256": data_sha, "n": len(x), "shape": list(x.shape),
                                                "weights_sha256": weights_sha, "resize": inception.RESIZE})
    return tensors


def evaluation_settings(n: int | None = None, reference_split: str | None = None,
                        cache: Cache | None = None) -> dict:
    """Every convention that moves these numbers (docs/method.md section 6), for provenance."""
    return {"inception": inception.weights_record(cache), "feature": "pool3, 2048-d",
            "resize": inception.RESIZE,
            "input": "uint8; float images in [-1, 1] quantised by round((x + 1) * 127.5), grey replicated to RGB",
            "network_dtype": "float32", "statistics_dtype": "float64",
            "covariance": "unbiased (N - 1)", "sqrtm": "scipy.linalg.sqrtm, retry with 1e-6 I offset on non-finite",
            "kid": {**KID_DEFAULTS, "subset_rule": KID_SUBSET_RULE,
                    "kernel": "polynomial (x.y / D + coef0)^degree", "estimator": "unbiased"},
            "precision_recall": {"k": PR_K, "distance": "euclidean on pool3"},
            "n": n, "reference_split": reference_split, "features_version": FEATURES_VERSION,
            "note": "FID is biased by N: compare only at equal N and the same reference statistics"}

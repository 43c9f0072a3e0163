"""The standard protocol (guided-diffusion's evaluator): score a samples .npz against a reference .npz.

    FID    pool3 (2048-d) features of the samples against the reference's stored mu/sigma when the
           file has them (the published gFID-50k protocol), else against its images' statistics
    sFID   the same on spatial features: TF 'mixed_6/conv' (torch-fidelity's Mixed_6d.branch1x1,
           after its ReLU), first 7 channels of the 17x17 map, flattened HWC (7 * 17 * 17 = 2023-d)
    precision / recall   k = 3 kNN balls on pool3, samples against the reference's images
    IS     only with classifier weights (bench/metrics/inception_score.py), else "not measured"

Features come from our offline Inception (bench/metrics/inception.py); the reference images'
features are cached by content. Every metric carries status "measured" or "not measured" (with
the reason, and value None), and the settings that move it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from bench.cache import Cache, content_key
from bench.metrics import fid as FID
from bench.metrics import inception
from bench.metrics import inception_score as ISC
from bench.metrics.adm_npz import Batch, read_batch

SPATIAL_LAYER = "Mixed_6d.branch1x1"  # TF graph name mixed_6/conv (fid-helper's TorchScript: mixed_6.conv)
SPATIAL_CHANNELS = 7
SPATIAL_RULE = ("TF 'mixed_6/conv:0' = torch-fidelity Mixed_6d.branch1x1 output after ReLU, (N, 192, 17, 17); "
                "first 7 channels, flattened in (H, W, C) order as guided-diffusion does: 2023-d")
PROTOCOL = "openai/guided-diffusion evaluations/evaluator.py (ADM), with our offline Inception"
FEATURES_VERSION = 1  # bump when the features or their cache layout change


@torch.inference_mode()
def features(images: torch.Tensor, cache: Cache | None = None, batch: int = 50) -> dict[str, torch.Tensor]:
    """Pool3 (N, 2048) and spatial (N, 2023) float64 features of uint8 images (N, 3, H, W), one pass."""
    """Spatial is None when the network has no such layer (then sFID is "not measured")."""
    net = inception.load_extractor(cache)
    spatial = []

    def keep(_module, _inputs, out):
        spatial.append(out[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(out), -1).double())

    try:
        handle = net.get_submodule(SPATIAL_LAYER).register_forward_hook(keep)
    except AttributeError:
        handle = None
    try:
        pool = FID.inception_features(images, batch=batch, cache=cache)
    finally:
        if handle is not None:
            handle.remove()
    return {"pool": pool, "spatial": torch.cat(spatial) if handle is not None else None}


def reference_features(ref: Batch, cache: Cache | None = None) -> dict[str, torch.Tensor]:
    """features() of a reference batch's images, cached by their bytes and the weights' sha256."""
    cache = cache or Cache()
    data_sha = hashlib.sha256(ref.images.tobytes()).hexdigest()
    weights_sha = inception.weights_record(cache)["converted_sha256"]
    key = content_key("adm_reference", data_sha, list(ref.images.shape), weights_sha, inception.RESIZE,
                      SPATIAL_RULE, FEATURES_VERSION)
    hit = cache.load("adm_reference", key)
    if hit is not None:
        return {k: v.double() for k, v in hit[0].items()}
    out = features(ref.torch_images(), cache)
    # float32 on disk is lossless: the network runs in float32.
    if out["spatial"] is None:  # not cached: an entry holds both feature sets
        return out
    cache.save("adm_reference", key, {k: v.float() for k, v in out.items()},
               {"data_sha256": data_sha, "shape": list(ref.images.shape), "weights_sha256": weights_sha})
    return out


def study_reference(path: Path | str, cache: Cache | None = None) -> dict:
    """A reference batch as the study's gFID reads it (fid.reference()'s form): pool3 features of its
    images (for KID and precision/recall, and FID when N <= 2048), and mu/sigma: the file's stored ones
    when it has them (the published protocol), else those of its images. `source` says which."""
    ref = read_batch(path)
    feats = reference_features(ref, cache)["pool"]
    if "pool" in ref.stats:
        mu, sigma = (torch.from_numpy(a) for a in ref.stats["pool"])
        source = f"mu/sigma stored in {Path(path).name}"
    else:
        mu, sigma = FID.stats(feats)
        source = f"statistics of the {len(feats)} images of {Path(path).name}"
    return {"features": feats, "mu": mu, "sigma": sigma, "source": source, "path": str(path),
            "n": len(feats)}


def _measured(value: float, **settings) -> dict:
    return {"status": "measured", "value": float(value), **settings}


def not_measured(reason: str, **settings) -> dict:
    return {"status": "not measured", "value": None, "reason": reason, **settings}


def _frechet(kind: str, sample: torch.Tensor | None, ref: Batch, ref_feats: torch.Tensor | None) -> dict:
    if sample is None or ref_feats is None:
        return not_measured(f"our Inception network ({inception.PACKAGE} in torch-fidelity's module) has no "
                            f"layer '{SPATIAL_LAYER}' (TF mixed_6/conv) to take spatial features from")
    stored = ref.stats.get(kind)
    if stored is not None:
        mu, sigma = stored
        if len(mu) != sample.shape[1]:
            return not_measured(f"the reference's stored {'mu/sigma' if kind == 'pool' else 'mu_s/sigma_s'} are "
                                f"{len(mu)}-d, our features {sample.shape[1]}-d: not the same feature layer",
                                n_samples=len(sample))
        value = FID.frechet_distance_to_stats(sample, mu, sigma)
        source = f"stored in the reference file ({'mu, sigma' if kind == 'pool' else 'mu_s, sigma_s'})"
        n_ref = None  # the dataset behind the stored statistics is not recorded in the file
    else:
        value = FID.frechet_distance_features(sample, ref_feats) if min(len(sample), len(ref_feats)) <= \
            sample.shape[1] else FID.frechet_distance(*FID.stats(sample), *FID.stats(ref_feats))
        source = f"computed from the reference file's {len(ref_feats)} images"
        n_ref = len(ref_feats)
    return _measured(value, n_samples=len(sample), n_reference=n_ref, reference_statistics=source,
                     features=("pool3, 2048-d" if kind == "pool" else SPATIAL_RULE))


def score_features(sample: dict[str, torch.Tensor], ref: Batch, ref_feats: dict[str, torch.Tensor],
                   classifier: dict | None = None, classifier_record: dict | None = None,
                   is_reason: str | None = None, inception_sha256: str | None = None) -> dict:
    """Every metric from features already computed (see score() for the files and networks).

    inception_sha256 (the FID network's converted weights) is written into every metric."""
    pr = FID.precision_recall(ref_feats["pool"], sample["pool"], k=FID.PR_K)
    pr_settings = dict(n_samples=len(sample["pool"]), n_reference=len(ref_feats["pool"]), k=pr["k"],
                       features="pool3, 2048-d", distance="euclidean, samples against the reference's images")
    if classifier is not None:
        isc = ISC.inception_score(sample["pool"], classifier["fc_weight"])
        isc = _measured(isc.pop("value"), n_samples=len(sample["pool"]), **isc, weights=classifier_record)
    else:
        isc = not_measured(is_reason or "no classifier weights", n_samples=len(sample["pool"]),
                           weights=classifier_record)
    out = {"fid": _frechet("pool", sample["pool"], ref, ref_feats["pool"]),
           "sfid": _frechet("spatial", sample["spatial"], ref, ref_feats["spatial"]),
           "precision": _measured(pr["precision"], **pr_settings),
           "recall": _measured(pr["recall"], **pr_settings),
           "inception_score": isc}
    return {k: {**m, "inception_sha256": inception_sha256} for k, m in out.items()}


def score(samples_path: Path | str, ref_path: Path | str, inception_weights: Path | str | None = None,
          cache: Cache | None = None) -> dict:
    """Score a samples .npz against a reference .npz (both in the ADM layout, bench/metrics/adm_npz.py)."""
    cache = cache or Cache()
    need = FID.PR_K + 1  # precision/recall with k = 3 needs more than 3 per side
    ref, samples = read_batch(ref_path, min_images=need), read_batch(samples_path, min_images=need)
    weights_file, found = ISC.find_weights(inception_weights)
    classifier, record, reason = None, None, found
    if weights_file is not None:  # loaded before the long feature pass, so a bad file fails fast
        classifier, record = ISC.load_classifier(weights_file, cache)
        record["found"] = found
        reason = record.get("reason")
    ref_feats = reference_features(ref, cache)
    sample_feats = features(samples.torch_images(), cache)
    weights = inception.weights_record(cache)
    metrics = score_features(sample_feats, ref, ref_feats, classifier, record, reason, weights["converted_sha256"])
    return {"protocol": PROTOCOL, "metrics": metrics,
            "samples": _describe(samples), "reference": _describe(ref),
            "settings": {**FID.evaluation_settings(n=len(samples.images), cache=cache), "spatial_feature": SPATIAL_RULE,
                         "n_samples": len(samples.images), "n_reference_images": len(ref.images)}}


def _describe(b: Batch) -> dict:
    return {"path": str(b.path), "n": len(b.images), "image_shape": list(b.images.shape[1:]),
            "stored_statistics": sorted(b.stats)}


def table(result: dict) -> str:
    """A small plain-text table of the metrics: value, or 'not measured' and why."""
    rows = []
    for name, m in result["metrics"].items():
        if m["status"] == "measured":
            how = m.get("reference_statistics") or (f"k={m['k']}" if "k" in m else f"{m.get('splits')} split(s)")
            rows.append(f"{name:<16} {m['value']:>12.4f}   N={m['n_samples']}; {how}")
        else:
            rows.append(f"{name:<16} {'not measured':>12}   {m['reason']}")
    head = (f"samples   {result['samples']['path']} ({result['samples']['n']} images)\n"
            f"reference {result['reference']['path']} ({result['reference']['n']} images"
            f"{'; stored: ' + ', '.join(result['reference']['stored_statistics']) if result['reference']['stored_statistics'] else ''})")
    return head + "\n" + "\n".join(rows)

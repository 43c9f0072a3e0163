"""The paper's numbers (DMVAE, arXiv 2512.07778), shown beside ours as "reported" rows.

Source: docs/method.md section 5, which transcribes Tables 1-3 of the paper. These are facts
about the paper, never results of this suite: every table labels them "reported".
"""
from __future__ import annotations

SETTING = "ImageNet 256x256, 16x16x32 latents, 300k DM iterations at batch 256, gFID-5k (no CFG)"
CAVEAT = ("The reported numbers come from ImageNet-256 at the paper's scale; this run uses another "
          "dataset, resolution, network size and training budget, and FID depends on N and on the "
          "reference set. Compare orders and gaps between priors, not the values themselves.")

# Table 1: reference distributions. Keyed by the paper's row name (priors carry it as info.paper_row).
TABLE1 = {
    "VAE-baseline": {"rfid": 0.54, "psnr": 25.7, "gfid": 27.3},
    "DINO": {"rfid": 0.81, "psnr": 21.8, "gfid": 13.1},
    "Resnet": {"rfid": 1.46, "psnr": 20.9, "gfid": 18.6},
    "SigLIP-text": {"rfid": 1.63, "psnr": 24.0, "gfid": 26.8},
    "Difftraj": {"rfid": 0.60, "psnr": 26.9, "gfid": 31.8},
    "SubDino": {"rfid": 0.29, "psnr": 25.6, "gfid": 37.9},
    "GMM": {"rfid": 0.42, "psnr": 27.3, "gfid": 29.6},
    "Gaussian": {"rfid": 0.47, "psnr": 27.4, "gfid": 26.6},
}
# Table 2: ablations of the DINO prior (PSNR / rFID / gFID-5k). Keyed by the config key our
# --ablate sweeps; values are the setting as our config spells it, with the paper's label.
TABLE2_DEFAULT = {"label": "default (lambda 10, L score nets, CFG 1, uniform t)",
                  "psnr": 22.1, "rfid": 0.44, "gfid": 13.1}
TABLE2 = {
    "dmvae.dm_weight": {"title": "DM weight lambda", "rows": {
        "1": {"label": "lambda 1", "psnr": 25.2, "rfid": 0.37, "gfid": 16.7},
        "10": {"label": "lambda 10 (default)", "psnr": 22.1, "rfid": 0.44, "gfid": 13.1},
        "20": {"label": "lambda 20", "psnr": 21.4, "rfid": 0.78, "gfid": 12.5},
        "100": {"label": "lambda 100", "psnr": 19.6, "rfid": 0.82, "gfid": 12.6}}},
    "teacher.net": {"title": "score-net size", "rows": {
        "S": {"label": "S", "psnr": 22.9, "rfid": 0.67, "gfid": 13.9},
        "L": {"label": "L (default)", "psnr": 22.1, "rfid": 0.44, "gfid": 13.1},
        "XL": {"label": "XL", "psnr": 21.7, "rfid": 0.91, "gfid": 12.5}}},
    "dmvae.dm_cfg": {"title": "CFG weight in the DM loss", "rows": {
        "1": {"label": "CFG 1 (default)", "psnr": 22.1, "rfid": 0.44, "gfid": 13.1},
        "3": {"label": "CFG 3", "psnr": 20.6, "rfid": 1.02, "gfid": 11.6},
        "5": {"label": "CFG 5", "psnr": 19.4, "rfid": 1.26, "gfid": 11.5}}},
    # The paper anneals the t range towards low noise during training; our knob is a fixed
    # range t ~ U[t0, 1] (t = 1 clean), so only the two reported rows are shown, not matched.
    "dmvae.t0": {"title": "t schedule of the DM loss", "rows": {
        "uniform": {"label": "uniform t in [0, 1] (default)", "psnr": 22.1, "rfid": 0.44, "gfid": 13.1},
        "annealed": {"label": "t range annealed towards low noise", "psnr": 21.9, "rfid": 0.55, "gfid": 12.7}},
        "note": "the paper anneals the range during training; our dmvae.t0 is a fixed lower bound, so "
                "these reported rows are shown beside ours, not matched value by value"},
}

# Table 3: ImageNet-256 system level, no CFG.
TABLE3 = [
    {"method": "VA-VAE", "psnr": 27.6, "rfid": 0.28, "epochs": 64, "params": "675M", "gfid": 5.14, "is": 130.2},
    {"method": "VA-VAE", "psnr": 27.6, "rfid": 0.28, "epochs": 800, "params": "675M", "gfid": 2.17, "is": 205.6},
    {"method": "AlignTok", "psnr": 25.8, "rfid": 0.26, "epochs": 64, "params": "675M", "gfid": 3.71, "is": 148.9},
    {"method": "AlignTok", "psnr": 25.8, "rfid": 0.26, "epochs": 800, "params": "675M", "gfid": 2.04, "is": 206.2},
    {"method": "RAE (DiT-XL)", "psnr": 18.9, "rfid": 0.57, "epochs": 800, "params": "675M", "gfid": 1.87,
     "is": 209.7},
    {"method": "SiT", "psnr": 26.0, "rfid": 0.61, "epochs": 1400, "params": "675M", "gfid": 8.61, "is": 131.7},
    {"method": "DMVAE", "psnr": 21.5, "rfid": 0.64, "epochs": 64, "params": "675M", "gfid": 3.22, "is": 171.7},
    {"method": "DMVAE", "psnr": 21.5, "rfid": 0.64, "epochs": 400, "params": "675M", "gfid": 1.82, "is": 206.9},
    {"method": "DMVAE", "psnr": 21.5, "rfid": 0.64, "epochs": 800, "params": "675M", "gfid": 1.64, "is": 216.3},
]
TABLE3_SETTING = "ImageNet 256x256, class-conditional, no CFG; gFID and IS of the paper's final generator"

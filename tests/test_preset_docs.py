"""The preset tables in the stage modules' docstrings are the presets: a changed preset without its
table (or the reverse) fails here, so the docs cannot drift from the code."""
import re

import pytest

from bench.dmvae import autoencoder, dm_stage, generator, start, teacher
from bench.study import config as study_config


def _numbers(cell: str) -> list:
    """'20k' -> [20000]; '8 / 2' -> [8, 2]; '5k x 3' -> [5000, 3]; '0.125 ... 1 (8)' -> 8 even steps to 1."""
    cell = cell.strip()
    if m := re.fullmatch(r"([\d.]+) \.\.\. ([\d.]+) \((\d+)\)", cell):
        a, b, n = float(m[1]), float(m[2]), int(m[3])
        return [a + (b - a) * i / (n - 1) for i in range(n)]
    out = []
    for tok in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?k?", cell):
        out.append(float(tok[:-1]) * 1000 if tok.endswith("k") else float(tok))
    return out


def _table(module) -> dict[str, dict[str, str]]:
    """preset -> {column header: cell} of the first Markdown table in the module docstring."""
    lines = [ln for ln in module.__doc__.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def _values(cfg, fields) -> list:
    out = []
    for f in fields:
        v = f(cfg) if callable(f) else getattr(cfg, f)
        out += list(v) if isinstance(v, tuple) else [v]
    return out


STAGE_TABLES = [
    (autoencoder, autoencoder.TOKENIZER_PRESETS, {"width": ["width"], "disc width / layers": ["disc_width", "disc_layers"],
                                                  "gan start (step)": ["gan_start"]}),
    (teacher, teacher.TEACHER_PRESETS, {"net": ["net"], "patch": ["patch"], "steps": ["steps"], "batch": ["batch"],
                                        "lr": ["lr"], "ema": ["ema_decay"]}),
    (start, start.PRETRAIN_PRESETS, {"steps": ["steps"], "batch": ["batch"], "lr": ["lr"],
                                     "distill images": ["distill_images"]}),
    (dm_stage, dm_stage.DMVAE_PRESETS, {"iterations": ["steps"], "batch": ["batch"], "lr (E, G)": ["lr"],
                                        "lr S_fake": ["fake_lr"], "warmup": ["warmup"], "k": ["dm_every"],
                                        "lambda_DM": ["dm_weight"], "GAN from": [lambda c: c.tokenizer.gan_start],
                                        "ema": ["ema_decay"]}),
    (generator, generator.GENERATOR_PRESETS, {"net": ["net"], "patch": ["patch"], "steps": ["steps"],
                                              "batch": ["batch"], "lr": ["lr"], "ema": ["ema_decay"],
                                              "checkpoints at": ["checkpoints"],
                                              "flip": [lambda c: "yes" if c.flip else "no"]}),
    (study_config, {k: study_config.StudyConfig(**v) for k, v in study_config.STUDY_PRESETS.items()},
     {"latents": ["latent_channels", "latent_size", "latent_size"],
      "gFID-N x seeds": [lambda c: c.eval.gfid_n, lambda c: len(c.eval.seeds)],
      "ref / rFID N": [lambda c: c.eval.ref_n], "convergence N": [lambda c: c.eval.convergence_n]}),
]


@pytest.mark.parametrize("module, presets, columns", STAGE_TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_docstring_preset_table_is_the_presets(module, presets, columns):
    table = _table(module)
    assert set(table) == set(presets), f"{module.__name__}: the table's presets are not the code's"
    for name, row in table.items():
        for column, fields in columns.items():
            want = _values(presets[name], fields)
            if all(isinstance(v, str) for v in want):
                assert row[column] == " ".join(want), (module.__name__, name, column)
            else:
                assert _numbers(row[column]) == pytest.approx([float(v) for v in want]), (module.__name__, name, column)

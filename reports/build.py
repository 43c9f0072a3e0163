"""build_report(out): <out>/report.md and <out>/report.html from the folder's results alone.

The document is assembled once as blocks (render.py) and written twice. Nothing is recomputed:
every number comes from results.json (or an ablation's / the toy's JSON) and every figure from
the saved figure data.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.errors import UserError
from bench.io import atomic_write_bytes
from reports import figures, paper, tables
from reports.render import Block, Heading, Note, Pairs, Para, to_html, to_markdown
from reports.results import Study, load_study
from reports.tables import Table, fmt


def flatten(obj, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys; lists of scalars inline, other lists as JSON."""
    if isinstance(obj, dict):
        out = []
        for k in sorted(obj):
            out += flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, float):
        return [(prefix, f"{obj:.6g}")]
    if isinstance(obj, list) and all(not isinstance(v, (dict, list)) for v in obj):
        return [(prefix, ", ".join(map(str, obj)) or "(empty)")]
    if isinstance(obj, list):
        return [(prefix, json.dumps(obj, sort_keys=True))]
    return [(prefix, "—" if obj is None else str(obj))]


def _run_line(meta: dict) -> str:
    cfg = meta.get("config", {})
    dev = meta.get("device", {})
    dev = dev.get("name") or dev.get("type") if isinstance(dev, dict) else dev
    wall = meta.get("wall_s")
    preset = f"Preset '{meta['preset']}'. " if meta.get("preset") else ""
    merged = meta.get("merged_from")
    wall_text = (f"merged from {len(merged)} runs (commits {', '.join(sorted({str(m.get('git_commit'))[:7] for m in merged}))}; "
                 f"their wall times add up to {fmt(wall, 0)} s)" if merged else
                 f"wall time of the last invocation {fmt(wall, 0)} s")
    return (f"{preset}Dataset {cfg.get('dataset')} at {cfg.get('resolution')} px, latents "
            f"{cfg.get('latent_channels')}x{cfg.get('latent_size')}x{cfg.get('latent_size')}, feature nets "
            f"'{cfg.get('features')}'. Config hash {meta.get('config_hash')}, commit {meta.get('git_commit')}, "
            f"device {dev}, world size {meta.get('world_size')}, run date {meta.get('date')}, {wall_text}.")


def _toy_table(toy: dict) -> Table:
    rows = {"teacher (ODE samples of S_real)": toy.get("teacher") or {}, **toy.get("objectives", {})}
    keys = [k for k in ("sliced_w2", "energy_distance", "coverage", "outside_share")
            if any(isinstance(r.get(k), (int, float)) for r in rows.values())]
    t = Table("2D toy: each objective scored against fresh target samples",
              ["objective", "status", *keys, "wall s", "CPU s"])
    for name, r in rows.items():
        key = "teacher" if name.startswith("teacher") else name
        t.add([name, r.get("status", "ok") if r.get("status") != "failed" else f"failed: {r.get('reason')}",
               *[fmt(r.get(k), 4) for k in keys], fmt(toy.get("timings_s", {}).get(key), 1),
               fmt(toy.get("cpu_s", {}).get(key), 1)])
    t.notes.append(f"Target '{toy.get('config', {}).get('target')}', config hash {toy.get('config_hash')}; "
                   f"metric settings: {json.dumps(toy.get('metric_settings', {}), sort_keys=True)}.")
    return t


def document(study: Study) -> list[Block]:
    """The whole report as blocks."""
    res, meta = study.results, study.meta
    b: list[Block] = [Heading(1, "DMVAE latent-prior study")]
    b.append(Para(_run_line(meta)))
    b.append(Note(paper.CAVEAT))
    b += [Note(n) for n in study.notes]
    if res is not None:
        ev = meta["config"]["eval"]
        b.append(Para(f"Evaluation: rFID-{ev['ref_n']} and PSNR/SSIM on {ev['ref_n']} held-out "
                      f"({ev['ref_split']}) images; gFID-{ev['gfid_n']} per sampling seed over seeds "
                      f"{', '.join(map(str, ev['seeds']))} (mean ± sample std), class-balanced labels, "
                      f"{ev['sample_steps']}-step Euler ODE, CFG {ev['cfg_scale']}; the same held-out images "
                      f"give the reference statistics. FID depends on N: compare only at equal N."))
        b += [Heading(2, "Reference priors (Table 1 style)"), tables.table1(res), Para(tables.rank_agreement(res))]
        if len(tables.ok_priors(res)) >= 2:
            b.append(tables.gfid_resolution(res))
        failed = {n: r for n, r in tables.priors_in_order(res).items() if r.get("status") != "ok"}
        for name, r in failed.items():
            b.append(Note(f"Prior '{name}' is {r.get('status')}: {r.get('reason', 'no reason recorded')}. Its "
                          f"row has no numbers, because none were measured."))
        b += guidance_section(study)
        b += [Heading(2, "Did q(z) reach p_r?"), tables.matching_table(res), tables.dm_curve_table(res)]
        b += [Heading(2, "Latent structure"), tables.structure_table(res)]
        tsne, notes = figures.tsne_panels(study)
        b += [Note(n) for n in notes] + ([tsne] if tsne else [])
        b.append(Heading(2, "Convergence"))
        conv = figures.convergence(study)
        b.append(conv if isinstance(conv, figures.Figure) else Note(conv))
        b += [Heading(2, "System level (Table 3 style)"), tables.table3(res)]
    if study.ablations:
        b.append(Heading(2, "Ablations (Table 2 style)"))
        b += tables.table2(study.ablations)
    if res is not None:
        b.append(Heading(2, "Reconstructions and samples"))
        grids, notes = figures.image_grids(study)
        b += [Note(n) for n in notes] + grids
    toy = figures.toy2d(study)
    if toy is not None:
        b += [Heading(2, "2D toy (paper Fig. 3)"), _toy_table(study.toy)]
        b.append(toy if isinstance(toy, figures.Figure) else Note(toy))
    if res is not None:
        b += [Heading(2, "Time"), tables.timing_table(res)]
    b += provenance(study)
    return b


def guidance_section(study: Study) -> list[Block]:
    """The CFG sweep (eval.cfg_scales): its table, figure and per-class FID; nothing when no sweep ran."""
    table = tables.guidance_table(study.results)
    if table is None:
        return []
    b: list[Block] = [Heading(2, "Guidance sweep (CFG)"),
                      Note("These numbers are GUIDED (classifier-free guidance at the scale each row names) and are "
                           "not Table 1, which stays at its own CFG scale like the paper's unguided Table 1."),
                      table]
    fig = figures.guidance_sweep(study)
    if fig is not None:
        b.append(fig)
    per_class, notes = tables.class_fid_table(study.results)
    return b + [Note(n) for n in notes] + ([per_class] if per_class is not None else [])


def provenance(study: Study) -> list[Block]:
    """Everything in the meta block, readable: run, evaluation, priors (the open design decisions)."""
    meta = study.meta
    out: list[Block] = [Heading(2, "Provenance")]
    run = {k: meta.get(k) for k in ("preset", "command", "config_hash", "git_commit", "date", "python", "device", "world_size", "wall_s",
                                    "priors_requested", "seeds", "packages", "weights", "feature_source", "data")}
    out.append(Pairs("Run", flatten(run)))
    out.append(Pairs("Evaluation settings", flatten(meta.get("evaluation", {}))))
    runs = [("", study.results)] if study.results else []
    runs += [(f" ({tag})", r) for tag, r in study.ablations.items()]
    for suffix, res in runs[:1] if study.results else runs:
        for name, r in tables.priors_in_order(res).items():
            rows = flatten({"encoder_start": r.get("encoder_start"), "loss_terms": r.get("loss_terms"),
                            "regulariser": r.get("regulariser"), "models": r.get("models"),
                            "prior": res["meta"].get("provenance", {}).get(name)})
            out.append(Pairs(f"Prior '{name}'{suffix}: how its reference distribution and tokenizer were built",
                             [row for row in rows if row[1] != "—"]))
    out.append(Pairs("Resolved configuration", flatten(meta.get("config", {}))))
    return out


def build_report(out: Path) -> tuple[Path, Path]:
    """Write <out>/report.md and <out>/report.html; returns their paths."""
    study = load_study(Path(out))
    md, page = study.out / "report.md", study.out / "report.html"
    try:
        blocks = document(study)  # draws figures into <out>/figures
        atomic_write_bytes(md, to_markdown(blocks, study.out).encode("utf-8"))
        atomic_write_bytes(page, to_html(blocks, f"DMVAE latent-prior study ({study.meta.get('config_hash')})")
                           .encode("utf-8"))
    except OSError as e:
        raise UserError(f"Cannot write the report into '{study.out}' ({e.strerror}). Make the folder writable, "
                        f"or copy it somewhere writable and run 'run_all.py report' on the copy.") from None
    return md, page

"""The report's tables, built from results only: Table 1/2/3 style, structure, timings.

A Table holds formatted cells and which cells are best; reports/render.py writes it as Markdown
or HTML. Best is judged over this run's ok rows only, per column, in the column's direction
(lower rFID/gFID/KID; higher PSNR/SSIM/accuracies/silhouette); reported rows are never mixed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from reports import paper
from reports.data import METRIC_INDEX, guidance_summary, summary


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)        # per row: "this run" | "reported"
    best: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells marked best
    notes: list[str] = field(default_factory=list)

    def add(self, cells: list, kind: str = "this run") -> int:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])
        self.kinds.append(kind)
        return len(self.rows) - 1

    def mark_best(self, col: int, values: dict[int, float | None], higher: bool, digits: int = 2) -> None:
        """Mark the best of {row: value} in column col, compared as shown (rounded to `digits`), so
        equal-looking cells are marked together; needs two or more distinct values."""
        vals = {r: round(v, digits) for r, v in values.items() if v is not None and math.isfinite(v)}
        if len(set(vals.values())) < 2:  # one value, or all equal: nothing stands out
            return
        best = max(vals.values()) if higher else min(vals.values())
        self.best |= {(r, col) for r, v in vals.items() if v == best}


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def fmt_params(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def mean_std(d: dict | None, digits: int = 2) -> str:
    return "—" if not d else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def priors_in_order(results: dict) -> dict[str, dict]:
    """The priors in the order the run was asked for (results.json stores keys sorted)."""
    asked = [n for n in results["meta"].get("priors_requested", []) if n in results["priors"]]
    return {n: results["priors"][n] for n in [*asked, *sorted(set(results["priors"]) - set(asked))]}


def ok_priors(results: dict) -> dict[str, dict]:
    return {n: r for n, r in priors_in_order(results).items() if r.get("status") == "ok"}


def paper_row(results: dict, name: str) -> str | None:
    """The paper's row a prior reproduces, as the prior declared it (PriorInfo.paper_row, in its provenance)."""
    info = results["meta"].get("provenance", {}).get(name, {}).get("info", {})
    return info.get("paper_row")


def status_cell(r: dict) -> str:
    s = r.get("status", "?")
    return f"failed: {r.get('reason', 'no reason recorded')}" if s == "failed" else s


def _n(results: dict, key: str) -> int | None:
    ev = results["meta"].get("config", {}).get("eval", {})
    return ev.get(key)


# ------------------------------------------------------------------------------------ Table 1
def table1(results: dict) -> Table:
    """One row per prior: our reconstruction / generation / structure numbers beside the paper's."""
    ref_n, gfid_n = _n(results, "ref_n"), _n(results, "gfid_n")
    tseeds = len(results["meta"].get("config", {}).get("training_seeds", [0]))
    spread = f"{tseeds} training seeds" if tseeds > 1 else "sampling seeds, 1 training seed"
    t = Table(f"Table 1 style: reference priors (this run vs reported, {paper.SETTING})",
              ["prior", "paper row", "status", f"rFID-{_k(ref_n)}", "PSNR", "SSIM",
               f"gFID-{_k(gfid_n)} (mean ± std over {spread})", "q(z) reached p_r", "generator converged",
               "KID (mean)", "kNN acc.", "lin. probe", "silhouette", "rFID (reported)", "PSNR (reported)",
               "gFID-5k (reported)"])
    vals: dict[int, dict[int, float]] = {c: {} for c in range(len(t.columns))}
    summ = summary(results)  # pandas: per prior and metric, mean and spreads over the training seeds

    def cell(name: str, metric: str, digits: int, spread: str | None = "training") -> tuple[str, float]:
        got = summ.loc[(name, metric)]
        sd = got["training_std"] if got["seeds"] > 1 else (got["sampling_std"] if spread == "sampling" else None)
        text = fmt(float(got["mean"]), digits) + (f" ± {fmt(float(sd), digits)}" if spread and sd is not None
                                                   and sd == sd else "")
        return text, float(got["mean"])

    columns = ((3, "rfid", 2, "training"), (4, "psnr", 2, "training"), (5, "ssim", 3, "training"),
               (6, "gfid", 2, "sampling"), (9, "kid", 4, None), (10, "knn_accuracy", 3, None),
               (11, "linear_probe_accuracy", 3, None), (12, "silhouette", 3, None))
    for name, r in priors_in_order(results).items():
        row = paper_row(results, name)
        rep = paper.TABLE1.get(row, {})
        if r.get("status") != "ok":
            t.add([name, row or "—", status_cell(r), *["—"] * 10, fmt(rep.get("rfid")), fmt(rep.get("psnr"), 1),
                   fmt(rep.get("gfid"), 1)])
            continue
        cells = {c: cell(name, metric, digits, spread) for c, metric, digits, spread in columns}
        i = t.add([name, row or "—", "ok", *(cells[c][0] for c in (3, 4, 5, 6)), reached_cell(r),
                   converged_cell(r), *(cells[c][0] for c in (9, 10, 11, 12)), fmt(rep.get("rfid")),
                   fmt(rep.get("psnr"), 1), fmt(rep.get("gfid"), 1)])
        for c, _ in cells.items():
            vals[c][i] = cells[c][1]
    for c, metric, digits, _ in columns:
        t.mark_best(c, vals[c], METRIC_INDEX[metric].higher_is_better, digits)  # directions: reports/data.py
    floor = results["meta"].get("floors", {}).get("fid_real_vs_real")
    if floor:
        t.notes.append(f"Floor of FID at this N: {floor['n']} real train images against the held-out reference "
                       f"give FID {fmt(floor['value'])}; no generator can be expected below it at gFID-{_k(gfid_n)}.")
    t.notes.append("Every number is a mean over the training seeds (pandas over results.csv's rows: reports/data.py "
                   "summary); rFID, PSNR, SSIM and gFID carry the training-seed std when there are several seeds, "
                   "gFID the sampling std when there is one; KID and the structure columns (kNN, probe, silhouette "
                   "of the DMVAE latents of held-out images) are means only.")
    t.notes.append("q(z) reached p_r: " + _rule(results, "matching") + " A row marked 'NO' does not measure its "
                   "prior's latent space: its q(z) is somewhere between the encoder start and p_r.")
    t.notes.append("generator converged: " + _rule(results, "converged"))
    t.notes.append("Reported: " + paper.CAVEAT)
    return t


def _pm(r: dict, key: str, digits: int = 2) -> str:
    """A training-seed mean with its std when there are several seeds."""
    sd = (r.get("spread") or {}).get(key)
    return fmt(r[key], digits) + (f" ± {fmt(sd, digits)}" if sd is not None else "")


def _rule(results: dict, what: str) -> str:
    for r in ok_priors(results).values():
        if r.get(what):
            return r[what]["rule"] + "."
    return "(no row has it)."


def reached_cell(r: dict) -> str:
    m = r.get("matching")
    if not m:
        return "— (no DM stage)"
    per = m["per_training_seed"]
    return ("yes" if m["reached_all"] else "NO") + (f" ({sum(per.values())}/{len(per)} seeds)" if len(per) > 1 else "")


def converged_cell(r: dict) -> str:
    c = r.get("converged") or {}
    per = c.get("per_training_seed", {})
    return ("yes" if c.get("all") else "NO") + (f" ({sum(bool(v) for v in per.values())}/{len(per)} seeds)"
                                               if len(per) > 1 else "")


def _k(n: int | None) -> str:
    if n is None:
        return "N"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def kendall_tau(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float | None, list[str]]:
    """Kendall's tau-b between two scorings of the names both have (None with fewer than 2)."""
    names = sorted(set(ours) & set(theirs))
    if len(names) < 2:
        return None, names
    conc = disc = ties_a = ties_b = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            da, db = ours[a] - ours[b], theirs[a] - theirs[b]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (None if denom == 0 else (conc - disc) / denom), names


def rank_agreement(results: dict) -> str:
    """One sentence: Kendall tau-b of our gFID order against the paper's, over shared priors."""
    ours = {paper_row(results, n): r["gfid"]["mean"] for n, r in ok_priors(results).items()}
    theirs = {row: v["gfid"] for row, v in paper.TABLE1.items()}
    tau, names = kendall_tau(ours, theirs)
    if tau is None:
        return (f"Rank agreement with the paper's gFID order: not computed ({len(names)} prior(s) in common; "
                f"Kendall tau needs two or more).")
    return (f"Rank agreement with the paper's gFID order: Kendall tau-b = {tau:+.2f} over {len(names)} priors "
            f"({', '.join(names)}); +1 is the same order, -1 the reverse. With so few priors, even a perfect "
            f"order is weak evidence (five priors: tau = 1 by chance with probability 1/120).")


def gfid_resolution(results: dict, z: float = 2.0) -> Table:
    """Every pair in our gFID order, and whether its gap exceeds z times the combined std."""
    ok = sorted(ok_priors(results).items(), key=lambda kv: kv[1]["gfid"]["mean"])
    t = Table("Which gFID differences exceed the noise", ["pair (better first)", "gap", "combined std",
                                                          f"resolved (gap > {z:g} x std)"])
    for i, (a, ra) in enumerate(ok):
        for b, rb in ok[i + 1:]:
            gap = rb["gfid"]["mean"] - ra["gfid"]["mean"]
            sd = math.hypot(ra["gfid"]["std"], rb["gfid"]["std"])
            t.add([f"{a} < {b}", fmt(gap), fmt(sd), "yes" if gap > z * sd else "no"])
    if len(ok) >= 2:
        (best, rb), (worst, rw) = ok[0], ok[-1]
        gap, big = rw["gfid"]["mean"] - rb["gfid"]["mean"], max(rb["gfid"]["std"], rw["gfid"]["std"])
        t.notes.append(f"Best ({best}) vs worst ({worst}): gap {fmt(gap)} vs twice the larger std {fmt(2 * big)}: "
                       f"{'resolved' if gap > 2 * big else 'NOT resolved'}.")
    kinds = {r["gfid"].get("spread", "sampling seeds") for _, r in ok}
    if kinds == {"training seeds"}:
        t.notes.append("The std is over training seeds (each a full re-training of teacher, encoder start, DM "
                       "stage and generator; each seed's gFID is itself a mean over the sampling seeds). With "
                       "two or three seeds it is a rough estimate.")
    else:
        t.notes.append("The std is over sampling seeds with one trained model per prior: it measures sampling "
                       "noise, not the spread over training seeds, which is larger. Run with "
                       "--set training_seeds=0,1,2 to judge pairs by the training-seed spread.")
    return t


# ------------------------------------------------------------------------------------ guidance sweep
def swept_scales(summ, name: str) -> list[float]:
    """The CFG scales a prior's guidance sweep has rows for (guidance_summary's index)."""
    return sorted({w for p, m, w in summ.index if p == name and m == "gfid_cfg"})


def guidance_table(results: dict) -> Table | None:
    """Prior x CFG scale: gFID-N, precision, recall (means over training seeds ± their spread); None without
    a sweep. Guided rows, apart from Table 1 (which stays at eval.cfg_scale)."""
    summ = guidance_summary(results)
    names = [n for n in ok_priors(results) if swept_scales(summ, n)]
    if not names:
        return None
    gfid_n, table1 = _n(results, "gfid_n"), _n(results, "cfg_scale")
    t = Table(f"Guidance sweep (CFG, guided samples: not Table 1): gFID-{_k(gfid_n)}, precision and recall per "
              f"scale", ["prior", "CFG scale", f"gFID-{_k(gfid_n)} (mean ± std)", "precision (k = 3)",
                         "recall (k = 3)", "std over", "samples"])

    def cell(name: str, metric: str, w: float, digits: int) -> tuple[str, float]:
        got = summ.loc[(name, metric, w)]
        sd = got["training_std"] if got["seeds"] > 1 else got["sampling_std"]
        return f"{fmt(float(got['mean']), digits)} ± {fmt(float(sd), digits)}", float(got["mean"])

    for name in names:
        vals: dict[int, dict[int, float]] = {2: {}, 3: {}, 4: {}}
        for w in swept_scales(summ, name):
            cells = {c: cell(name, metric, w, d) for c, metric, d in ((2, "gfid_cfg", 2), (3, "precision_cfg", 3),
                                                                       (4, "recall_cfg", 3))}
            seeds = int(summ.loc[(name, "gfid_cfg", w), "seeds"])
            i = t.add([name, f"{w:g}", *(cells[c][0] for c in (2, 3, 4)),
                       f"{seeds} training seeds" if seeds > 1 else "sampling seeds (1 training seed)",
                       "Table 1's (same samples)" if w == table1 else "guided"])
            for c in vals:
                vals[c][i] = cells[c][1]
        for c, metric, digits in ((2, "gfid_cfg", 2), (3, "precision_cfg", 3), (4, "recall_cfg", 3)):
            t.mark_best(c, vals[c], METRIC_INDEX[metric].higher_is_better, digits)  # best scale of each prior
    t.notes.append(f"Classifier-free guidance v = v_u + w (v_c - v_u) at each scale w; Table 1 above stays at CFG "
                   f"{table1:g} (the paper's Table 1 is unguided). Every scale draws Table 1's samples "
                   f"(class-balanced labels, the same per-index noise, sampling seeds, N, sampler and reference "
                   f"statistics) with only w changed, so the row at CFG {table1:g}, where swept over Table 1's training seeds, is "
                   f"Table 1's gFID.")
    t.notes.append("Means over the training seeds (pandas over results.csv's gfid_cfg / precision_cfg / recall_cfg "
                   "rows: reports/data.py guidance_summary); the std is over the training seeds when there are "
                   "several, else over the sampling seeds. Bold: each prior's best scale.")
    floor = results["meta"].get("floors", {}).get("fid_real_vs_real")
    if floor:
        t.notes.append(f"Floor of FID at this N: {fmt(floor['value'])} ({floor['n']} real train images against the "
                       f"held-out reference).")
    return t


def class_fid_table(results: dict, per_side: int = 3) -> tuple[Table | None, list[str]]:
    """Per prior, its best and worst `per_side` classes by per-class FID (bench/study/guidance.py), each beside
    its floor and counts, at every swept scale; (None, []) without a sweep, (None, notes) when no class
    could be measured."""
    sweeps = {n: r["guidance"] for n, r in ok_priors(results).items() if r.get("guidance")}
    if not sweeps:
        return None, []
    scales = sorted({row["scale"] for g in sweeps.values() for row in g["per_scale"]})
    t = Table("Per-class FID (guidance sweep, first sampling seed): the best and worst classes of each prior",
              ["prior", "rank (1 = best)", "class", "images: samples / reference / floor", "per-class floor",
               *[f"FID at CFG {w:g}" for w in scales]])
    notes: list[str] = []
    ranked: dict[str, list[str]] = {}  # how the classes were ranked -> the priors ranked so
    for name, g in sweeps.items():
        fid_at = {row["scale"]: row["per_class_fid"] for row in g["per_scale"]}
        ranked_at = g["table1_scale"] if g["table1_scale"] in fid_at else min(fid_at)
        measured = sorted((f, k) for k, f in enumerate(fid_at[ranked_at]) if f is not None)
        pc = g["per_class"]
        if not measured:
            notes.append(f"Per-class FID of '{name}' is not measured: with gFID-{g['n']} over {len(pc['n'])} "
                         f"classes each class has {min(pc['n'])} to {max(pc['n'])} samples and "
                         f"{min(pc['n_ref'])} to {max(pc['n_ref'])} reference images, and a class's FID needs at "
                         f"least 2 of each. Raise eval.gfid_n and eval.ref_n.")
            continue
        picks = range(len(measured)) if len(measured) <= 2 * per_side else \
            [*range(per_side), *range(len(measured) - per_side, len(measured))]
        for i in picks:
            k = measured[i][1]
            label = f"{k}: {pc['names'][k]}" if k < len(pc.get("names") or []) else str(k)
            t.add([name, f"{i + 1} of {len(measured)}", label, f"{pc['n'][k]} / {pc['n_ref'][k]} / {pc['n_floor'][k]}",
                   fmt(pc["floor"][k]), *[fmt(fid_at[w][k]) if w in fid_at else "—" for w in scales]])
        ranked.setdefault(f"at CFG {ranked_at:g}" + (" (Table 1's samples)" if ranked_at == g["table1_scale"] else
                          f" (the smallest swept scale: Table 1's scale {g['table1_scale']:g} was not swept)"),
                          []).append(name)
    if not t.rows:
        return None, notes
    t.notes += notes + [f"Classes ranked by their FID {how}: {', '.join(names)}." for how, names in ranked.items()]
    t.notes.append("Per class: the first sampling seed's samples of that class against the held-out reference "
                   "images of that class; floor: the FID floor's real train images of that class (as many as the "
                   "samples) against the same reference images. At a few images per class FID is dominated by its "
                   "bias, so read each value against its class's floor, not against Table 1's gFID. Values are means "
                   "over the training seeds that ran the sweep.")
    return t, []


# ------------------------------------------------------------------------------------ structure
def _means(results: dict):
    """mean over the training seeds of (prior, metric), from the tidy frame (reports/data.py summary)."""
    summ = summary(results)
    return lambda name, metric: float(summ.loc[(name, metric), "mean"]) if (name, metric) in summ.index else None


def structure_table(results: dict) -> Table:
    t = Table("Latent structure", ["prior", "kNN acc. ref / DMVAE", "lin. probe ref / DMVAE",
                                   "silhouette ref / DMVAE"])
    mean = _means(results)
    for name in ok_priors(results):
        t.add([name, *(f"{fmt(mean(name, f'{k}_reference'), 3)} / {fmt(mean(name, k), 3)}"
                       for k in ("knn_accuracy", "linear_probe_accuracy", "silhouette"))])
    t.notes.append("ref: draws of the reference distribution p_r with their labels; DMVAE: the tokenizer's "
                   "normalised latents of held-out images. Means over the training seeds. Where q(z) reached p_r "
                   "the two columns should tell the same story.")
    return t


def matching_table(results: dict) -> Table:
    """Did the DM stage bring q(z) to p_r? Each statistic before → after, beside its floor."""
    t = Table("Distribution matching: q(z) against p_r, before → after the DM stage",
              ["prior", "encoder start", "MMD² before → after", "MMD² floor", "MMD² S_real samples",
               "C2ST acc. before → after", "C2ST floor", "sliced W2 before → after (floor)", "reached"])
    mean = _means(results)
    for name, r in ok_priors(results).items():
        if not r.get("matching"):
            t.add([name, "—", *["— (no DM stage)"] * 6, "—"])
            continue

        def s(stat, which, digits):
            return fmt(mean(name, f"{stat}_{which}"), digits)
        start = (r.get("encoder_start") or {}).get("kind", "?")
        t.add([name, start, f"{s('mmd2', 'before', 4)} → {s('mmd2', 'after', 4)}", s("mmd2", "floor", 4),
               s("mmd2", "teacher_samples", 4), f"{s('c2st_acc', 'before', 3)} → {s('c2st_acc', 'after', 3)}",
               s("c2st_acc", "floor", 3),
               f"{s('sliced_w2', 'before', 3)} → {s('sliced_w2', 'after', 3)} ({s('sliced_w2', 'floor', 3)})",
               reached_cell(r)])
    t.notes.append("All statistics in p_r's normalised latent space, against one fixed draw of p_r: x = encoder "
                   "latents of held-out images (start encoder before, final EMA encoder after). Floor: the same "
                   "statistic between two independent draws of p_r at the same N. S_real samples: the teacher's own "
                   "ODE samples, about as close as the DM gradient can bring q(z). C2ST: held-out accuracy of a "
                   "small MLP telling the two sets apart (0.5 = indistinguishable). Values are means over the "
                   "training seeds.")
    t.notes.append("Rule: " + _rule(results, "matching"))
    return t


def dm_curve_table(results: dict) -> Table:
    """MMD^2 of q(z) against p_r along the DM stage (first training seed's probes): how it got there, or didn't."""
    curves = {n: r["dm_curve"] for n, r in ok_priors(results).items() if r.get("dm_curve")}
    steps = sorted({p["step"] for c in curves.values() for p in c})
    t = Table("MMD² of q(z) to p_r along the DM stage (probe on held-out images, first training seed)",
              ["prior", *[f"it {s}" for s in steps]])
    for name, c in curves.items():
        by = {p["step"]: p["mmd2"] for p in c}
        t.add([name, *[fmt(by.get(s), 4) for s in steps]])
    t.notes.append("Each probe: the EMA encoder's latents of fixed held-out images against fixed p_r draws "
                   "(dmvae.probe_n of each), biased MMD² with the kernel fixed on those draws; 'it' counts DM-stage "
                   "iterations (the tokenizer updates on every dm_every-th of them).")
    return t


def timing_table(results: dict) -> Table:
    stages = ["prior", "teacher", "start", "dmvae", "generator", "evaluate"]
    if any("guidance" in (r.get("timings") or {}) for r in results["priors"].values()):
        stages.append("guidance")  # the CFG sweep's own stage (eval.cfg_scales)
    t = Table("Wall time per stage (seconds, when computed) and training throughput",
              ["prior", "prior build", *stages[1:], "total", "img/s (teacher / start / dmvae / generator)"])
    for name, r in priors_in_order(results).items():
        tim = r.get("timings") or {}
        thr = r.get("throughput_img_per_s") or {}
        total = sum(tim.values())  # own times (results.py refuses the older inclusive ones), so they add up
        t.add([name, *[fmt(tim.get(s), 1) for s in stages], fmt(total, 1) if tim else "—",
               " / ".join(fmt(thr.get(s), 0) for s in ("teacher", "start", "dmvae", "generator"))])
    t.notes.append("The shared encoder start is computed once (by the first prior that needs it); later "
                   "priors show its recorded time. Stages loaded from an earlier run keep the time they took "
                   "when computed.")
    return t


# ------------------------------------------------------------------------------------ Table 2
def table2(ablations: dict[str, dict]) -> list[Table]:
    """One table per swept key: our rows (one per value and prior) and the paper's rows."""
    by_key: dict[str, list[tuple[str, dict]]] = {}
    for res in ablations.values():
        a = res["meta"]["ablation"]  # {key, value}: what this run of the sweep set (results.json, schema 3)
        by_key.setdefault(a["key"], []).append((a["value"], res))
    tables = []
    for key, runs in by_key.items():
        runs.sort(key=lambda vr: _sort_value(vr[0]))
        first = runs[0][1]
        ref_n, gfid_n = _n(first, "ref_n"), _n(first, "gfid_n")
        rep = paper.TABLE2.get(key)
        t = Table(f"Table 2 style: ablation of {key}" + (f" ({rep['title']})" if rep else ""),
                  ["source", "setting", "prior", "PSNR", f"rFID-{_k(ref_n)}", f"gFID-{_k(gfid_n)} (mean ± std)",
                   "MMD² before → after (floor)", "status"])
        cols = {3: {}, 4: {}, 5: {}}
        for value, res in runs:
            for name, r in priors_in_order(res).items():
                if r.get("status") != "ok":
                    t.add(["this run", f"{key}={value}", name, "—", "—", "—", "—", status_cell(r)])
                    continue
                m = r.get("matching")
                i = t.add(["this run", f"{key}={value}", name, fmt(r["psnr"]), fmt(r["rfid"]), mean_std(r["gfid"]),
                           f"{fmt(m['before']['mmd2'], 4)} → {fmt(m['after']['mmd2'], 4)} ({fmt(m['floor']['mmd2'], 4)})"
                           if m else "—", "ok"])
                cols[3][i], cols[4][i], cols[5][i] = r["psnr"], r["rfid"], r["gfid"]["mean"]
        for c, metric in ((3, "psnr"), (4, "rfid"), (5, "gfid")):
            t.mark_best(c, cols[c], METRIC_INDEX[metric].higher_is_better)  # directions: reports/data.py
        if rep:
            for value, row in rep["rows"].items():
                t.add(["reported", row["label"], "DINO (paper)", fmt(row["psnr"], 1), fmt(row["rfid"]),
                       fmt(row["gfid"], 1), "—", "—"], kind="reported")
            if rep.get("note"):
                t.notes.append(rep["note"])
            t.notes.append("Reported: the paper's Table 2 (DINO prior, ImageNet-256, gFID-5k). " + paper.CAVEAT)
        else:
            t.notes.append(f"The paper has no ablation of {key}: no reported rows.")
        tables.append(t)
    return tables


def _sort_value(v: str):
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


# ------------------------------------------------------------------------------------ Table 3
def table3(results: dict) -> Table:
    gfid_n, ref_n = _n(results, "gfid_n"), _n(results, "ref_n")
    t = Table("Table 3 style: system level (reported rows from the paper; this run's rows below them)",
              ["source", "method", "PSNR", "rFID", "epochs", "generator params", "gFID", "IS"])
    for row in paper.TABLE3:
        t.add(["reported", row["method"], fmt(row["psnr"], 1), fmt(row["rfid"]), str(row["epochs"]), row["params"],
               fmt(row["gfid"]), fmt(row["is"], 1)], kind="reported")
    for name, r in ok_priors(results).items():
        g = (r.get("models") or {}).get("generator", {})
        t.add(["this run", f"DMVAE, {name} prior" if name != "vae" else "KL-VAE baseline", fmt(r["psnr"], 1),
               f"{fmt(r['rfid'])} (N={ref_n})", fmt(g.get("epochs"), 1),
               f"{fmt_params(g.get('params'))} ({g.get('size', '?')})",
               f"{mean_std(r['gfid'])} (N={gfid_n})", "not measured"])
    t.notes.append("Reported: " + paper.TABLE3_SETTING + ". " + paper.CAVEAT)
    t.notes.append("IS is not measured by this suite: the offline Inception weights (docs/assets.md) are the FID "
                   "feature network without its classifier layer, so an Inception Score cannot be computed.")
    return t

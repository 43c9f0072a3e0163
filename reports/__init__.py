"""Reports: the paper's Table 1/2/3 and figures, from results.json alone (no torch), as Markdown and HTML.

    results.py  read and check a study folder (results.json, ablations, toy)
    data.py     results as data: load_results(*dirs) -> a tidy pandas frame; results.csv
    merge.py    one study from several run folders (pooled training seeds, configs side by side)
    paper.py    the paper's reported numbers (docs/method.md section 5)
    tables.py   Table 1/2/3 style tables, structure, timings, Kendall tau
    figures.py  convergence curves, t-SNE panels, image grids, the toy figure (matplotlib)
    render.py   Markdown and self-contained HTML writers
    build.py    build_report(out): assemble and write <out>/report.md and <out>/report.html
"""
from reports.build import build_report
from reports.data import load_results

__all__ = ["build_report", "load_results"]

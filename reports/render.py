"""Markdown and HTML writers for one report document: a list of blocks, rendered two ways.

Markdown is GitHub-flavoured (pipe tables, images as paths relative to report.md; &, < and > written as
entities, | escaped in table cells, so no text is read as HTML). HTML is one
self-contained file: inline CSS, images as base64 data URIs, no scripts, every text escaped.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from reports.figures import Figure
from reports.tables import Table


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Note:
    text: str


@dataclass
class Pairs:
    """A two-column key / value table (provenance)."""

    title: str
    rows: list[tuple[str, str]]


Block = Heading | Para | Note | Table | Figure | Pairs


# ------------------------------------------------------------------------------------ Markdown
def _md_text(text) -> str:
    """Text as Markdown shows it literally: &, < and > as entities, so a prior name, a failure reason or a
    command line holding HTML is shown, never interpreted (GitHub renders &lt; as <)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md_text(str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " "))


def _md_table(columns: list[str], rows: list[list[str]], best: set = frozenset()) -> list[str]:
    out = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in best else _md_cell(c) for j, c in enumerate(row)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def to_markdown(blocks: list[Block], folder: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + _md_text(b.text.replace("\n", " ")), ""]
        elif isinstance(b, Para):
            lines += [_md_text(b.text), ""]
        elif isinstance(b, Note):
            lines += [f"> **Note.** {_md_text(b.text)}", ""]
        elif isinstance(b, Table):
            lines += [f"**{_md_cell(b.title)}**", "", *_md_table(b.columns, b.rows, b.best), ""]
            lines += [f"- {_md_text(n)}" for n in b.notes] + ([""] if b.notes else [])
        elif isinstance(b, Figure):
            rel = Path(os.path.relpath(b.path, folder)).as_posix()
            lines += [f"![{_md_cell(b.caption)}]({rel})", "", f"*{_md_text(b.caption)}*", ""]
        elif isinstance(b, Pairs):
            lines += [f"**{_md_cell(b.title)}**", "", *_md_table(["setting", "value"], [list(r) for r in b.rows]), ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------ HTML
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#1b1f24;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tr.reported td{background:#f3f0ff;color:#4a4a68;font-style:italic}
td.best{font-weight:700;background:#dafbe1}
.title{font-weight:600;margin-top:1.2em}
ul.notes{font-size:12.5px;color:#57606a;margin-top:.2em}
blockquote{border-left:4px solid #d4a72c;background:#fff8c5;margin:1em 0;padding:.5em 1em}
figure{margin:1em 0}
figure img{max-width:100%;image-rendering:pixelated;border:1px solid #d0d7de}
figcaption{font-size:12.5px;color:#57606a}
.scroll{overflow-x:auto}
"""


def _h(text) -> str:
    return html.escape(str(text), quote=True)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in t.columns)
    body = []
    for i, (row, kind) in enumerate(zip(t.rows, t.kinds)):
        cells = "".join(f'<td class="best">{_h(c)}</td>' if (i, j) in t.best else f"<td>{_h(c)}</td>"
                        for j, c in enumerate(row))
        body.append(f'<tr class="{"reported" if kind == "reported" else "ours"}">{cells}</tr>')
    notes = "".join(f"<li>{_h(n)}</li>" for n in t.notes)
    return (f'<div class="title">{_h(t.title)}</div><div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>' + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(blocks: list[Block], title: str) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_h(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_h(b.text)}</p>")
        elif isinstance(b, Note):
            parts.append(f"<blockquote><strong>Note.</strong> {_h(b.text)}</blockquote>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Figure):
            parts.append(f'<figure><img src="{_data_uri(b.path)}" alt="{_h(b.caption)}">'
                         f"<figcaption>{_h(b.caption)}</figcaption></figure>")
        elif isinstance(b, Pairs):
            rows = "".join(f"<tr><td>{_h(k)}</td><td>{_h(v)}</td></tr>" for k, v in b.rows)
            parts.append(f'<div class="title">{_h(b.title)}</div><div class="scroll"><table><thead><tr>'
                         f"<th>setting</th><th>value</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_h(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")

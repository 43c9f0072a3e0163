"""A user's captions file for the 'text' prior: one caption per train image, in one of three formats.

- text (any other suffix): UTF-8, one caption per line, line i for image i of the train split, in the
  split's order (the only format for datasets without files: fashion-mnist, cifar10, synthetic);
- .json: an object {file name: caption};
- .csv: a header row with a file column (file, filename, image or path) and a caption column (caption
  or text), then one row per image.
A file name is the image's path below its split's folder as the dataset records it (ImageSet.files,
"<class>/<file>" for imagefolder), or the bare file name when no two train images share it (ImageNet's
file names are unique). Entries for images outside the train split (val, test, a `limit`) are ignored
and counted; a train image without a caption, an empty caption or a name given twice is an error.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path, PurePosixPath

from bench.errors import UserError

FILE_COLUMNS = ("file", "filename", "image", "path")
CAPTION_COLUMNS = ("caption", "text")


def load_captions_file(path: str | Path, n: int, files: tuple[str, ...] = ()) -> list[str]:
    """The captions of the n train images (files: their names, for the keyed formats)."""
    return read_captions(path, n, files)[0]


def read_captions(path: str | Path, n: int, files: tuple[str, ...] = ()) -> tuple[list[str], dict]:
    """(one caption per train image, what was read: format, entries, unused entries)."""
    path = Path(path)
    fmt = {".json": "json", ".csv": "csv"}.get(path.suffix.lower(), "lines")
    if not path.is_file():
        raise UserError(f"Captions file {path} does not exist: give a UTF-8 text file with one caption per "
                        f"line, line i for image i of the train split ({n} lines), or a .json / .csv file "
                        f"keyed by image file name (datasets with files, e.g. imagefolder).")
    if fmt == "lines":
        return _lines(path, n), {"format": "lines", "entries": n, "unused": 0}
    if not files:
        raise UserError(f"Captions file {path} is keyed by file name ({fmt}), but this dataset's images have "
                        f"no file names (only imagefolder records them): give a text file with one caption "
                        f"per line instead, line i for image i of the train split ({n} lines).")
    if len(files) != n:
        raise ValueError(f"{len(files)} file names for {n} train images")  # a bug, not bad input
    table = _read_json(path) if fmt == "json" else _read_csv(path)
    caps, used = _match(path, table, files)
    return caps, {"format": fmt, "entries": len(table), "unused": len(table) - len(used)}


def _lines(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != n:
        raise UserError(f"Captions file {path} has {len(lines)} lines, but the train split has {n} images: "
                        f"it needs exactly one caption per line, line i for image i, in the split's order.")
    empty = [i + 1 for i, s in enumerate(lines) if not s.strip()]
    if empty:
        raise UserError(f"Captions file {path} has empty captions on lines {empty[:5]}"
                        f"{' ...' if len(empty) > 5 else ''}: every image needs a caption.")
    return [s.strip() for s in lines]


def _read_json(path: Path) -> dict[str, str]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"Captions file {path} is not valid UTF-8 JSON ({e}): give an object "
                        f'{{"<class>/<file>": "caption", ...}}, one entry per train image.') from e
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        found = "an object with non-string values" if isinstance(table, dict) else f"a JSON {type(table).__name__}"
        raise UserError(f"Captions file {path} must hold one JSON object mapping file names to caption "
                        f'strings, {{"<class>/<file>": "caption", ...}}; found {found}.')
    return {_norm(k): v for k, v in table.items()}


def _read_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    fcol = next((header.index(c) for c in FILE_COLUMNS if c in header), None)
    ccol = next((header.index(c) for c in CAPTION_COLUMNS if c in header), None)
    if fcol is None or ccol is None:
        raise UserError(f"Captions file {path} needs a header row with a file column ({', '.join(FILE_COLUMNS)}) "
                        f"and a caption column ({', '.join(CAPTION_COLUMNS)}); its first row is "
                        f"{rows[0] if rows else []}.")
    table, twice = {}, []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # blank lines carry nothing
        if len(row) <= max(fcol, ccol):
            raise UserError(f"Captions file {path}, line {line}, has {len(row)} fields but the header names "
                            f"{len(header)}: quote captions that contain commas (\"a coat, red\").")
        name = _norm(row[fcol])
        if name in table:
            twice.append(name)
        table[name] = row[ccol]
    if twice:
        raise UserError(f"Captions file {path} names {len(twice)} file(s) more than once ({_some(twice)}): give "
                        f"each image one caption.")
    return table


def _norm(name: str) -> str:
    return PurePosixPath(name.strip().replace("\\", "/")).as_posix().removeprefix("./")


def _match(path: Path, table: dict[str, str], files: tuple[str, ...]) -> tuple[list[str], set[str]]:
    """Each train image's caption, by its path below the split's folder or by its bare file name; the keys used."""
    base = Counter(PurePosixPath(f).name for f in files)
    caps, used, missing, ambiguous = [], set(), [], []
    for f in files:
        key = f if f in table else PurePosixPath(f).name
        if key not in table:
            missing.append(f)
        elif key != f and base[key] > 1:
            ambiguous.append(key)
        used.add(key)
        caps.append(table.get(key))
    if ambiguous:
        raise UserError(f"Captions file {path} keys captions by bare file names that several train images share "
                        f"({_some(sorted(set(ambiguous)))}): key those by '<class>/<file>' instead.")
    if missing:
        raise UserError(f"Captions file {path} has no caption for {len(missing)} of the {len(files)} train "
                        f"images ({_some(missing)}): it needs one entry per train image, keyed by its path below "
                        f"the split's folder ('<class>/<file>') or by its file name.")
    empty = [f for f, c in zip(files, caps) if not c.strip()]
    if empty:
        raise UserError(f"Captions file {path} has empty captions for {len(empty)} train images "
                        f"({_some(empty)}): every image needs a caption.")
    return [c.strip() for c in caps], used


def _some(items: list, k: int = 5) -> str:
    """The first k items, and how many more."""
    shown = ", ".join(map(str, items[:k]))
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")

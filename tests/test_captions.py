"""Captions files for the text prior: one line per image, or JSON / CSV keyed by the images' file names."""
import json

import numpy as np
import pytest

from bench.data import DataSpec, load_dataset
from bench.errors import UserError
from bench.features.captions import load_captions_file, read_captions

FILES = ("cat/a.png", "cat/b.png", "dog/c.png")


def one_paragraph(e):
    return "\n" not in str(e.value)


def test_imagefolder_records_file_names(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c / "sub").mkdir(parents=True)
        for i in range(10):  # 10 per class: one held out as val, one as test
            where = tmp_path / "train" / c / ("sub" if i == 4 else "") / f"{c}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(where)
    data = load_dataset(DataSpec("imagefolder", 16, root=str(tmp_path)))
    for s in (data.train, data.val, data.test):
        assert len(s.files) == len(s) > 0
        assert all(f.split("/")[0] == s.class_names[y] for f, y in zip(s.files, s.labels.tolist()))
    everything = data.train.files + data.val.files + data.test.files
    assert len(set(everything)) == 20 and "cat/sub/cat_4.png" in everything
    assert load_dataset(DataSpec("synthetic", 16, limit=20)).train.files == ()  # no files, no names


def test_json_keyed_by_path_or_bare_name(tmp_path):
    f = tmp_path / "caps.json"
    f.write_text(json.dumps({"cat/a.png": " a cat ", "b.png": "another cat", "./dog/c.png": "a dog",
                             "val/x.png": "not in the train split"}))
    caps, read = read_captions(f, 3, FILES)
    assert caps == ["a cat", "another cat", "a dog"]
    assert read == {"format": "json", "entries": 4, "unused": 1}


def test_csv_with_header_and_quoted_commas(tmp_path):
    f = tmp_path / "caps.csv"
    f.write_text('image,caption\ncat/a.png,"a cat, sitting"\ncat/b.png,a cat\n\ndog/c.png,a dog\n')
    assert load_captions_file(f, 3, FILES) == ["a cat, sitting", "a cat", "a dog"]
    f.write_text("File,Text\ndog/c.png,a dog\ncat/a.png,x\nb.png,y\n")  # any order, header case-insensitive
    assert load_captions_file(f, 3, FILES) == ["x", "y", "a dog"]


def test_lines_format_unchanged(tmp_path):
    f = tmp_path / "caps.txt"
    f.write_text("one\ntwo\nthree\n")
    assert read_captions(f, 3, FILES) == (["one", "two", "three"], {"format": "lines", "entries": 3, "unused": 0})
    with pytest.raises(UserError, match="has 3 lines, but the train split has 4") as e:
        load_captions_file(f, 4)
    assert one_paragraph(e)


@pytest.mark.parametrize("suffix, text, match", [
    (".json", '{"cat/a.png": "a cat", "dog/c.png": "a dog"}', r"no caption for 1 of the 3 train images \(cat/b.png\)"),
    (".csv", "file,caption\ncat/a.png,a cat\ndog/c.png,a dog\n", r"no caption for 1 of the 3 .*cat/b.png"),
    (".json", '{"cat/a.png": "a", "cat/b.png": " ", "dog/c.png": "c"}', r"empty captions for 1 train images \(cat/b.png\)"),
    (".json", '["a", "b", "c"]', "must hold one JSON object .* found a JSON list"),
    (".json", '{"cat/a.png": 3}', "found an object with non-string values"),
    (".json", '{"cat/a.png": ', "is not valid UTF-8 JSON"),
    (".csv", "name,caption\ncat/a.png,a\n", r"needs a header row with a file column \(file, filename, image, path\)"),
    (".csv", "file,caption\ncat/a.png,a\ncat/b.png,b\ncat/a.png,c\ndog/c.png,d\n", r"names 1 file\(s\) more than once \(cat/a.png\)"),
    (".csv", "file,caption\ncat/a.png\n", "line 2, has 1 fields"),
])
def test_bad_keyed_files_are_one_paragraph_errors(tmp_path, suffix, text, match):
    f = tmp_path / f"caps{suffix}"
    f.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        load_captions_file(f, 3, FILES)
    assert one_paragraph(e) and str(f) in str(e.value)


def test_shared_bare_names_must_be_qualified(tmp_path):
    f = tmp_path / "caps.json"
    f.write_text(json.dumps({"x.png": "which one?", "cat/a.png": "a"}))
    with pytest.raises(UserError, match=r"several train images share \(x.png\): key those by '<class>/<file>'"):
        load_captions_file(f, 3, ("cat/a.png", "cat/x.png", "dog/x.png"))


def test_keyed_file_needs_file_names_and_missing_file(tmp_path):
    f = tmp_path / "caps.json"
    f.write_text("{}")
    with pytest.raises(UserError, match="no file names .* one caption per line") as e:
        load_captions_file(f, 3)
    assert one_paragraph(e)
    with pytest.raises(UserError, match="does not exist.*keyed by image file name"):
        load_captions_file(tmp_path / "nope.csv", 3, FILES)

"""The user's own data (manifest, COCO, NUS-WIDE): mistakes in the files named by file and
line, the same image never in two splits, and a rerun on an existing run folder checked
against its data and feature cache before any extraction.

Runs use the tiny test backbone (`conftest.tiny_backbone`) in place of the configured
one; a backbone that must not be built raises."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_checked
from ofrnn_tf import pipeline
from ofrnn_tf.data import run_data
from ofrnn_tf.features import run_cache
from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data import (
    DataFileError, DataLabelMapError, DataNotFoundError, ImagesNotFoundError)
from ofrnn_tf.data.adapters import load_coco, load_manifest, load_nuswide
from ofrnn_tf.data.example import Example
from ofrnn_tf.data import splits as splits_module
from ofrnn_tf.data.splits import SPLITS, SplitTooSmallError, load_examples
from ofrnn_tf.features import cache, shard_meta
from ofrnn_tf.features.backbones import describe_backbone
from ofrnn_tf.jsonio import read_json
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, RunFacts


def _png(path, value: int, size: int = 16) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _rows(split: str, ids, labels=lambda i: "a;b" if i % 3 == 0 else "ab"[i % 2]) -> str:
    return "path,labels\n" + "".join(f"img/{split}_{i:03d}.png,{labels(i)}\n" for i in ids)


def _seed(split: str, i: int) -> int:
    return zlib.crc32(f"{split}{i}".encode())


def manifest_folder(root, train: int = 12, test: int = 4, val: int = 3) -> str:
    """`root` with img/<split>_<i>.png and train.csv, test.csv (and val.csv)."""
    for split, count in (("train", train), ("test", test), ("val", val)):
        for i in range(count):
            _png(os.path.join(root, "img", f"{split}_{i:03d}.png"), _seed(split, i))
        if count:
            with open(os.path.join(root, f"{split}.csv"), "w") as f:
                f.write(_rows(split, range(count)))
    return str(root)


# -- a val file whose images are all missing is not replaced by a hold-out ----------------
def test_a_val_file_whose_images_all_miss_is_an_error_not_a_hold_out(tmp_path):
    root = manifest_folder(tmp_path, train=20, test=4, val=0)
    (tmp_path / "val.csv").write_text(
        "path,labels\n" + "".join(f"images/train_{i:03d}.png,a\n" for i in range(5)))
    with pytest.raises(DataNotFoundError, match=r"val.csv: none of the 5 labelled images "
                                                r"exists \(first: .*images/train_000.png"):
        load_examples("manifest", {"data_dir": root}, 0.05)
    (tmp_path / "val.csv").write_text("path,labels\n")  # a header only
    with pytest.raises(SplitTooSmallError, match=r"val.csv: no labelled image, so the "
                                                 r"validation split is empty.*remove the file"):
        load_examples("manifest", {"data_dir": root}, 0.05)
    os.remove(tmp_path / "val.csv")  # no val file: held out of train
    splits, _ = load_examples("manifest", {"data_dir": root}, 0.3)
    assert splits["val"] and len(splits["train"]) + len(splits["val"]) == 20


# -- a manifest that is not UTF-8 ---------------------------------------------------------
def test_a_manifest_in_another_encoding_is_named_with_its_line(tmp_path):
    _png(tmp_path / "img" / "0.png", 0)
    _png(tmp_path / "img" / "1.png", 1)
    text = "path,labels\nimg/0.png,green square\nimg/1.png,rouge carré\n"
    for name in ("train.csv", "train.jsonl", "train.txt"):
        body = text if name.endswith((".csv", ".txt")) else "".join(
            json.dumps({"path": f"img/{i}.png", "labels": [label]}, ensure_ascii=False) + "\n"
            for i, label in enumerate(("green square", "rouge carré")))
        (tmp_path / name).write_bytes(body.encode("cp1252"))
        line = 3 if name != "train.jsonl" else 2
        with pytest.raises(DataFileError, match=rf"{name}: line {line}: not UTF-8 text "
                                                r"\(byte 0xe9\); save the manifest as UTF-8"):
            load_manifest(str(tmp_path / name))
    (tmp_path / "ok.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # UTF-8 with a BOM
    assert load_manifest(str(tmp_path / "ok.csv"))[1].names == ("green square", "rouge carré")
    # With their byte-order mark, UTF-16 (PowerShell's) and UTF-32 read as UTF-8 does.
    for encoding in ("utf-16", "utf-16-be", "utf-32"):
        marked = text.encode(encoding)
        if not encoding.endswith("be"):
            assert marked[:2] in (b"\xff\xfe", b"\xfe\xff")
        else:
            marked = b"\xfe\xff" + marked
        (tmp_path / "wide.csv").write_bytes(marked)
        assert load_manifest(str(tmp_path / "wide.csv"))[1].names == (
            "green square", "rouge carré"), encoding
    # Without one, the advice converts from the encoding and byte order its NULs show,
    # not from a spreadsheet's cp1252.
    for encoding in ("utf-16le", "utf-16be", "utf-32le", "utf-32be"):
        (tmp_path / "wide.csv").write_bytes(text.encode(encoding))
        with pytest.raises(DataFileError, match=rf"wide.csv: not UTF-8 text \({encoding.upper()} "
                                                rf"without a byte-order mark, by its NUL bytes\); "
                                                rf".*iconv -f {encoding} -t utf-8"):
            load_manifest(str(tmp_path / "wide.csv"))
    (tmp_path / "wide.csv").write_bytes(text.encode("utf-32")[:-3])  # cut inside a letter
    with pytest.raises(DataFileError, match=r"not UTF-32 text .*iconv -f utf-32 -t utf-8"):
        load_manifest(str(tmp_path / "wide.csv"))


# -- comma-separated labels ---------------------------------------------------------------
def test_comma_separated_labels_are_explained_and_a_comma_class_is_shown(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png", i)
    (tmp_path / "bad.csv").write_text("path,labels\nimg/0.png,a,b\n")
    with pytest.raises(DataFileError, match=r"bad.csv: line 2: 3 fields, the header has 2: "
                                            r"labels are separated by ';' or '\|', not ','"):
        load_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "quoted.csv").write_text('path,labels\nimg/0.png,a\nimg/1.png,"a,b"\n')
    _, label_map, _ = load_manifest(str(tmp_path / "quoted.csv"))
    err = capsys.readouterr().err
    assert label_map.names == ("a", "a,b")
    assert "quoted.csv: 2 classes: 'a', 'a,b'" in err
    assert "WARNING: class name(s) holding a comma: ['a,b'] (first on line 3)" in err
    assert "separated by ';' or '|'" in err
    (tmp_path / "str.jsonl").write_text(json.dumps({"path": "img/2.png", "labels": "a, b"}))
    load_manifest(str(tmp_path / "str.jsonl"))
    assert "class name(s) holding a comma: ['a, b'] (first on line 1)" in capsys.readouterr().err


# -- the same image twice -----------------------------------------------------------------
def test_the_same_image_in_two_splits_is_refused_naming_file_and_splits(tmp_path):
    root = manifest_folder(tmp_path, train=12, test=4)
    (tmp_path / "test.csv").write_text(_rows("test", range(4)) + "img/train_005.png,a\n")
    image = os.path.realpath(tmp_path / "img" / "train_005.png")
    with pytest.raises(DataFileError, match=rf"the image {image} is listed in train and in "
                                            r"test \(as 'img/train_005.png' and "
                                            r"'img/train_005.png'\): each image may be in one "
                                            r"split only"):
        load_examples("manifest", {"data_dir": root}, 0.05)
    # Through a symbolic link to the same folder: the resolved path is compared.
    os.symlink(tmp_path / "img", tmp_path / "pictures")
    (tmp_path / "test.csv").write_text(_rows("test", range(4)) + "pictures/train_005.png,a\n")
    with pytest.raises(DataFileError, match=r"listed in train and in test \(as "
                                            r"'img/train_005.png' and 'pictures/train_005.png'"):
        load_examples("manifest", {"data_dir": root}, 0.05)


def test_a_copy_of_an_image_in_another_split_is_named_with_what_it_does(tmp_path, capsys):
    root = manifest_folder(tmp_path, train=12, test=4)
    shutil.copyfile(tmp_path / "img" / "train_005.png", tmp_path / "img" / "copy.png")
    (tmp_path / "test.csv").write_text(_rows("test", range(4)) + "img/copy.png,a\n")
    load_examples("manifest", {"data_dir": root}, 0.05)
    assert re.search(r"WARNING: 1 test image\(s\) hold the same bytes as a train image under "
                     r"another name \(\S*img/copy.png = \S*img/train_005.png\): the test "
                     r"metrics count images the run trained on", capsys.readouterr().err)
    # A hard link is another path to the same bytes: validation would choose τ on it.
    (tmp_path / "test.csv").write_text(_rows("test", range(4)))
    os.link(tmp_path / "img" / "test_002.png", tmp_path / "img" / "linked.png")
    (tmp_path / "val.csv").write_text(_rows("val", range(3)) + "img/linked.png,b\n")
    load_examples("manifest", {"data_dir": root}, 0.05)
    assert ("WARNING: 1 test image(s) hold the same bytes as a val image under another name"
            in capsys.readouterr().err)
    # Copies within one split only weigh an image twice: nothing said.
    (tmp_path / "val.csv").write_text(_rows("val", range(3)))
    (tmp_path / "train.csv").write_text(_rows("train", range(12)) + "img/copy.png,a\n")
    splits, _ = load_examples("manifest", {"data_dir": root}, 0.05)
    assert len(splits["train"]) == 13 and "WARNING" not in capsys.readouterr().err


def test_empty_files_in_two_splits_are_not_called_copies(tmp_path, capsys):
    """Failed downloads hold no image: the extraction skips each, no metric counts them."""
    root = manifest_folder(tmp_path, train=12, test=4)
    for name in ("empty_train.png", "empty_test.png"):
        (tmp_path / "img" / name).write_bytes(b"")
    (tmp_path / "train.csv").write_text(_rows("train", range(12)) + "img/empty_train.png,a\n")
    (tmp_path / "test.csv").write_text(_rows("test", range(4)) + "img/empty_test.png,a\n")
    load_examples("manifest", {"data_dir": root}, 0.05)
    assert "WARNING" not in capsys.readouterr().err


def test_files_of_one_size_are_read_whole_only_where_their_first_bytes_agree(tmp_path,
                                                                            monkeypatch):
    """A data set of BMPs of one pixel count has every file of one size: the copy check
    reads a few kilobytes of each, not every byte of the data set at every start."""
    rng = np.random.default_rng(0)
    size = 100_000
    images = {split: [] for split in SPLITS}
    for k in range(30):
        path = tmp_path / f"{k:02d}.bmp"
        path.write_bytes(b"BM" + rng.bytes(size - 2))
        images["train" if k < 20 else "test"].append(Example(str(k), str(path), (0,)))
    copy = tmp_path / "copy.bmp"
    shutil.copyfile(images["train"][3].image, copy)
    images["val"].append(Example("copy", str(copy), (0,)))
    read = []

    class Counted:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def read(self, n=-1):
            data = self.file.read(n)
            read.append(len(data))
            return data

    monkeypatch.setattr(splits_module, "open", lambda path, mode: Counted(open(path, mode)),
                        raising=False)
    found = splits_module.copies_across_splits(images)
    assert found == {("train", "val"): [(images["train"][3], images["val"][0])]}
    assert sum(read) < 31 * 10_000 + 2 * size, sum(read)  # the pair alone is read whole


def test_the_same_image_twice_in_one_file_is_refused_naming_both_lines(tmp_path):
    root = manifest_folder(tmp_path, train=12, test=4)
    (tmp_path / "train.csv").write_text(_rows("train", range(12)) + "./img/train_003.png,a\n")
    with pytest.raises(DataFileError, match=r"train.csv: line 14: the image .*img/train_003.png "
                                            r"is listed twice \(first on line 5\)"):
        load_examples("manifest", {"data_dir": root}, 0.05)
    # One manifest file: also before validation and test are held out of it.
    with pytest.raises(DataFileError, match=r"line 14: the image .* is listed twice"):
        load_examples("manifest", {"manifest": str(tmp_path / "train.csv")}, 0.05)


def test_the_same_image_twice_in_one_split_is_found_across_spellings(tmp_path):
    _png(tmp_path / "img" / "a.png", 0)
    os.symlink(tmp_path / "img" / "a.png", tmp_path / "img" / "link.png")
    splits = {"train": [Example("1", str(tmp_path / "img" / "a.png"), (0,)),
                        Example("2", str(tmp_path / "img" / "link.png"), (0,))]}
    from ofrnn_tf.data.splits import check_distinct_images
    with pytest.raises(DataFileError, match=r"a.png is listed twice in train \(as '1' and '2'\)"):
        check_distinct_images(splits)


def _coco(tmp_path, images):
    data = {"images": [{"id": i, "file_name": name, "width": 8, "height": 8}
                       for i, name in images],
            "annotations": [{"id": 100 + i, "image_id": i, "category_id": 1,
                             "bbox": [0, 0, 4, 4]} for i, _ in images],
            "categories": [{"id": 1, "name": "cat"}]}
    for _, name in images:
        _png(tmp_path / "images" / name, 0)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return str(tmp_path / "instances.json"), str(tmp_path / "images")


def test_coco_images_sharing_a_file_are_refused(tmp_path):
    ann, image_dir = _coco(tmp_path, [(1, "a.png"), (2, "b.png"), (3, "a.png")])
    with pytest.raises(DataFileError, match=r"instances.json: image ids 1 and 3 have the same "
                                            r"file 'a.png'"):
        load_coco(ann, image_dir)


# -- missing images are named -------------------------------------------------------------
def test_the_first_missing_image_is_named_with_its_line(tmp_path, capsys):
    root = manifest_folder(tmp_path, train=12, test=4)
    (tmp_path / "train.csv").write_text(_rows("train", range(12)) + "img/nope.png,a\n")
    load_examples("manifest", {"data_dir": root}, 0.05)
    missing = os.path.join(root, "img", "nope.png")
    assert (f"train.csv: of 13 listed, 12 images kept, 0 dropped with no label, 1 dropped "
            f"with a missing file (first: {missing}, line 14)") in capsys.readouterr().err

    ann, image_dir = _coco(tmp_path / "coco", [(1, "a.png"), (2, "b.png")])
    os.remove(os.path.join(image_dir, "b.png"))
    _, _, stats = load_coco(ann, image_dir)
    assert str(stats) == (f"{ann}: of 2 listed, 1 images kept, 0 dropped with no label, 1 "
                          f"dropped with a missing file (first: "
                          f"{os.path.join(image_dir, 'b.png')}, image id 2)")
    assert stats.dropped_missing == 1

    # Several: the first three are named, the rest counted.
    (tmp_path / "train.csv").write_text(_rows("train", range(12)) + "".join(
        f"img/nope{i}.png,a\n" for i in range(5)))
    load_examples("manifest", {"data_dir": root}, 0.05)
    named = "; ".join(f"{os.path.join(root, 'img', f'nope{i}.png')}, line {14 + i}"
                      for i in range(3))
    assert (f"5 dropped with a missing file (first: {named}; and 2 more)"
            in capsys.readouterr().err)


def test_nuswide_names_the_first_missing_image_and_its_list_line(tmp_path):
    root = tmp_path / "nus"
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("sky\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("a\\1.jpg\r\n\r\na\\2.jpg\r\n")
    (root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt").write_text("1\n1\n")
    _png(root / "Flickr" / "a" / "1.jpg", 0)
    _, _, stats = load_nuswide(str(root), "train")
    missing = os.path.join(str(root), "Flickr", "a", "2.jpg")
    assert f"(first: {missing}, line 3 of TrainImagelist.txt)" in str(stats)


# -- a JSON array -------------------------------------------------------------------------
def test_a_json_array_manifest_is_read_and_its_items_named(tmp_path):
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png", i)
    records = [{"path": f"img/{i}.png", "labels": ["blue"] if i else ["red", "blue"]}
               for i in range(3)]
    (tmp_path / "arr.json").write_text(json.dumps(records, indent=2))
    examples, label_map, _ = load_manifest(str(tmp_path / "arr.json"))
    assert label_map.names == ("blue", "red")
    assert [e.label_ids for e in examples] == [(0, 1), (0,), (0,)]
    (tmp_path / "one_line.json").write_text(json.dumps(records))
    assert len(load_manifest(str(tmp_path / "one_line.json"))[0]) == 3

    records[1] = {"labels": ["blue"]}
    (tmp_path / "bad.json").write_text(json.dumps(records, indent=2))
    with pytest.raises(DataFileError, match=r"bad.json: item 2 \(line 9\): missing or empty "
                                            r"'path'"):
        load_manifest(str(tmp_path / "bad.json"))
    (tmp_path / "cut.json").write_text(json.dumps(records[:1], indent=2)[:-2])
    with pytest.raises(DataFileError, match=r"cut.json: line \d+: not valid JSON"):
        load_manifest(str(tmp_path / "cut.json"))


def test_a_json_array_manifest_counts_its_lines_once_not_from_its_start_per_item():
    # Each item's line was counted from the file's start: 10^5 items took hours.
    from ofrnn_tf.data.adapters.manifest import _json_array_rows

    counted = []

    class Text(str):
        def count(self, sub, start=0, end=None):
            counted.append((end if end is not None else len(self)) - start)
            return str.count(self, sub, start, end)

    records = [{"path": f"img/{i}.png", "labels": ["blue"]} for i in range(200)]
    plain = json.dumps(records, indent=1)
    rows = list(_json_array_rows("arr.json", Text(plain)))
    assert rows[-1][0] == f"item 200 (line {plain.count(chr(10), 0, plain.rindex('{')) + 1})"
    assert [row[2] for row in rows] == [f"img/{i}.png" for i in range(200)]
    assert sum(counted) <= len(plain), sum(counted)


def test_a_manifest_s_labels_are_looked_up_in_the_label_map_not_searched_for(tmp_path):
    # Each row's labels were searched for among the class names: with 300 classes, a
    # seventh of the time a manifest of 500,000 rows took to read.
    searched = []

    class Names(tuple):
        def __contains__(self, name):
            searched.append(name)
            return tuple.__contains__(self, name)

    label_map = LabelMap(["blue", "red"], source="train.csv")
    label_map.names = Names(label_map.names)
    (tmp_path / "m.csv").write_text("path,labels\n" + "".join(
        f"img/{i}.png,{'blue;red' if i % 2 else 'red'}\n" for i in range(50)))
    examples, _, _ = load_manifest(str(tmp_path / "m.csv"), label_map, check_files=False)
    assert [e.label_ids for e in examples[:2]] == [(1,), (0, 1)]
    assert not searched
    assert "red" in label_map and "green" not in label_map


@pytest.mark.parametrize("name, text, message", [
    ("empty.csv", "", "empty.csv: empty manifest (expected a header 'path,labels')"),
    ("unlabelled.csv", "path,labels\na.png,\n", "unlabelled.csv: no labels in the manifest"),
    ("short.csv", "path,labels,id\na.png,red\n",
     "short.csv: line 2: 2 fields, the header has 3"),
    ("nameless.csv", "path,labels\n  ,red\n", "nameless.csv: line 2: empty 'path'"),
    ("no_comma.json", '[{"path": "a.png", "labels": ["red"]} {"path": "b.png"}]',
     "no_comma.json: line 1: not valid JSON (expected ',' or ']' after item 1)"),
    ("bad_item.json", '[{"path": "a.png", "labels": ["red"]},\n {red}]',
     "bad_item.json: line 2: not valid JSON (Expecting property name enclosed in double "
     "quotes)"),
    ("trailing.json", '[{"path": "a.png", "labels": ["red"]}]\nmore',
     "trailing.json: line 2: not valid JSON (text after the array)"),
    ("pairs.json", '[["a.png", "red"]]',
     'pairs.json: item 1 (line 1): expected a JSON object {"path": ..., "labels": [...]}, '
     'got list'),
    ("scored.jsonl", '{"path": "a.png", "labels": {"red": 1}}\n',
     "scored.jsonl: line 1: 'labels' must be a list of class names, got {'red': 1}"),
])
def test_a_malformed_manifest_is_refused_naming_its_line(tmp_path, name, text, message):
    _png(tmp_path / "a.png", 0)
    (tmp_path / name).write_text(text)
    with pytest.raises(DataFileError) as refused:
        load_manifest(str(tmp_path / name))
    assert str(refused.value) == f"{tmp_path / message.split(':')[0]}:{message.split(':', 1)[1]}"


def test_a_manifest_is_read_whatever_its_name_and_blank_rows_are_passed_over(tmp_path):
    # A name without .csv/.jsonl is told by its first character; empty rows are no examples.
    for i in range(2):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "listing").write_text('{"path": "0.png", "labels": ["red"]}\n')
    assert load_manifest(str(tmp_path / "listing"))[1].names == ("red",)
    (tmp_path / "table").write_text("path,labels\n\n0.png,red\n,\n1.png,blue\n\n")
    examples, label_map, _ = load_manifest(str(tmp_path / "table"))
    assert label_map.names == ("blue", "red") and len(examples) == 2


# -- data-file errors are the input's fault -----------------------------------------------
def test_data_file_errors_have_a_dedicated_type(tmp_path):
    root = manifest_folder(tmp_path, train=12, test=4)
    (tmp_path / "test.csv").write_text(_rows("test", range(4)) + "img/test_009.png,zebra\n")
    with pytest.raises(DataLabelMapError, match=r"test.csv: line 6: labels \['zebra'\] are not "
                                                r"in the label map .*train.csv"):
        load_examples("manifest", {"data_dir": root}, 0.05)
    assert issubclass(DataLabelMapError, LabelMapMismatchError)  # as before, for callers
    (tmp_path / "test.csv").write_text("path,labels\nimg/test_000.png,a,b\n")
    with pytest.raises(DataFileError):
        load_examples("manifest", {"data_dir": root}, 0.05)
    ann, image_dir = _coco(tmp_path / "coco", [(1, "a.png")])
    with pytest.raises(DataLabelMapError, match="instances.json"):
        load_coco(ann, image_dir, LabelMap(["dog"], source="train.json"))


@pytest.mark.slow
def test_the_command_reports_a_data_file_error_in_one_line(tmp_path):
    root = manifest_folder(tmp_path / "data", train=12, test=4)
    with open(os.path.join(root, "test.csv"), "a") as f:
        f.write("img/test_009.png,zebra\n")
    done = run_checked([sys.executable, str(ROOT / "train.py"), "--config=manifest",
                        f"--data.data_dir={root}", f"--workdir={tmp_path / 'run'}",
                        f"--runtime.cache_dir={tmp_path / 'cache'}"], expect_failure=True)
    assert "train.py: " in done.stderr and "labels ['zebra'] are not in the label map" in \
        done.stderr
    assert "Traceback" not in done.stderr
    assert "--help" not in done.stderr  # the remedy is in the file, not in a flag


# -- a manifest file and a folder ---------------------------------------------------------
def test_a_manifest_file_and_a_data_dir_together_are_refused():
    with pytest.raises(ValueError, match=r"--data.manifest=all.csv and --data.data_dir=my_data "
                                         r"both name the data.*give one of them"):
        ExperimentConfig().replace(data={"dataset": "manifest", "manifest": "all.csv",
                                         "data_dir": "my_data"})


# -- example images of the same name ------------------------------------------------------
def test_example_images_of_the_same_name_in_two_folders_are_both_kept(
        tmp_path, save_examples_unpictured):
    paths = [_png(tmp_path / colour / "000.png", value) for colour, value in
             (("red", 1), ("blue", 2))]
    data = run_data.Data({"test": [Example(str(i), p, (i,)) for i, p in enumerate(paths)]},
                         LabelMap(["red", "blue"]))
    run_dir = RunDir(str(tmp_path / "run"))
    os.makedirs(run_dir.examples_dir)
    open(os.path.join(run_dir.examples_dir, "000.png"), "wb").close()  # an earlier copy
    os.makedirs(run_dir.attention_dir)  # and a picture an earlier version named otherwise
    open(os.path.join(run_dir.attention_dir, "000_000_000.png"), "wb").close()
    copies, drawn = save_examples_unpictured(run_dir, data)
    assert os.listdir(run_dir.attention_dir) == []  # the new pictures only (none drawn here)
    assert [os.path.basename(c) for c in copies] == ["000_000.png", "001_000.png"]
    assert run_dir.example_images() == copies
    for copy, source in zip(copies, paths):
        assert Path(copy).read_bytes() == Path(source).read_bytes()
    assert [drawn[c] for c in copies] == [["red"], ["blue"]]
    assert read_json(run_dir.examples_index_file) == [
        {"file": os.path.join("examples", "000_000.png"), "image_id": "0", "labels": ["red"]},
        {"file": os.path.join("examples", "001_000.png"), "image_id": "1", "labels": ["blue"]}]


def test_only_the_runs_own_copies_and_pictures_are_replaced(tmp_path, save_examples_unpictured):
    # A name of 255 bytes: its copy's index prefix would pass the file systems' limit.
    long = "x" * 251 + ".png"
    paths = [_png(tmp_path / "images" / "a.png", 1), _png(tmp_path / "images" / long, 2)]
    labels = LabelMap(["red", "blue"])
    run_dir = RunDir(str(tmp_path / "run"))
    both = run_data.Data({"test": [Example(str(i), p, (i,)) for i, p in enumerate(paths)]},
                         labels)
    first, _ = save_examples_unpictured(run_dir, both)
    assert os.path.basename(first[1]).startswith("001_xxx") and first[1].endswith(".png")
    assert len(os.path.basename(first[1]).encode()) <= 255
    # Files of the user's in a folder the run writes into stay; the run's own go.
    open(os.path.join(run_dir.examples_dir, "README.txt"), "w").close()
    os.makedirs(run_dir.attention_dir)
    for name in ("figure.png", "001_earlier.png"):
        open(os.path.join(run_dir.attention_dir, name), "wb").close()
    one = run_data.Data({"test": [Example("0", paths[0], (0,))]}, labels)
    copies, _ = save_examples_unpictured(run_dir, one)
    assert sorted(os.listdir(run_dir.examples_dir)) == ["000_a.png", "README.txt"]
    assert run_dir.example_images() == copies
    os.remove(copies[0])  # a copy deleted since: not an example (the export warms up without)
    assert run_dir.example_images() == []
    assert os.listdir(run_dir.attention_dir) == ["figure.png"]


def test_a_run_folder_from_elsewhere_cannot_make_the_run_remove_or_write_files_outside_it(
        tmp_path, save_examples_unpictured):
    # A run folder received from someone else: its examples.json names files elsewhere,
    # its examples/ and attention/ are links to folders of the user's, and a link sits
    # where a copy will be written. Only the run's own files are removed or written; a
    # copy that is a link (git-annex, DVC) is the run's, and only the link is removed.
    home = tmp_path / "home"
    home.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "001_plot.png", "000_kept.jpg"):
        (home / name).write_text(name)
    run_dir = RunDir(str(tmp_path / "run"))
    os.makedirs(run_dir.examples_dir)
    os.symlink(home / "c.txt", os.path.join(run_dir.examples_dir, "000_a.png"))
    os.symlink(home / "000_kept.jpg", os.path.join(run_dir.examples_dir, "000_kept.jpg"))
    Path(run_dir.examples_index_file).write_text(json.dumps(
        [{"file": str(home / "a.txt")}, {"file": os.path.join("examples", "..", "..", "home",
                                                                "b.txt")},
         {"file": os.path.join("examples", "000_kept.jpg")}]))
    # What export reads for its warm-up: the one entry naming a file in examples/.
    assert run_dir.example_images() == [os.path.join(run_dir.examples_dir, "000_kept.jpg")]
    os.symlink(home, run_dir.attention_dir)
    data = run_data.Data({"test": [Example("0", _png(tmp_path / "images" / "a.png", 1), (0,))]},
                         LabelMap(["red"]))
    copies, _ = save_examples_unpictured(run_dir, data)
    assert sorted(os.listdir(home)) == ["000_kept.jpg", "001_plot.png", "a.txt", "b.txt",
                                        "c.txt"]
    assert all((home / name).read_text() == name for name in os.listdir(home))
    assert copies == [os.path.join(run_dir.examples_dir, "000_a.png")]
    assert not os.path.islink(copies[0]) and run_dir.example_images() == copies
    assert sorted(os.listdir(run_dir.examples_dir)) == ["000_a.png"]  # the stale link went
    assert not os.path.islink(run_dir.attention_dir)
    # Without examples.json (a run written before it), a linked examples/ lists nothing.
    os.remove(run_dir.examples_index_file)
    shutil.rmtree(run_dir.examples_dir)
    os.symlink(home, run_dir.examples_dir)
    assert run_dir.example_images() == []
    save_examples_unpictured(run_dir, data)
    assert len(os.listdir(home)) == 5 and not os.path.islink(run_dir.examples_dir)


# -- the cache fingerprint covers the image files -----------------------------------------
def manifest_config(root, cache_dir) -> ExperimentConfig:
    return ExperimentConfig().replace(
        data={"dataset": "manifest", "data_dir": str(root)}, train={"batch_size": 2},
        features={"num_shards": 1}, runtime={"cache_dir": str(cache_dir)})


def _legacy_fingerprint(splits, label_map, backbone, layer) -> str:
    """The content fingerprint as cache format 1 (earlier versions) computed it."""
    digests = {}
    for split, examples in sorted(splits.items()):
        digest = hashlib.sha256()
        for e in examples:
            areas = e.label_areas or ()
            digest.update(json.dumps([e.image_id, list(e.label_ids),
                                      [round(a, 6) for a in areas]]).encode())
            digest.update(b"\n")
        digests[split] = digest.hexdigest()
    record = {"backbone": describe_backbone(backbone, layer), "labels": list(label_map.names),
              "splits": digests, "dtype": shard_meta.FEATURE_DTYPE}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def test_another_folder_with_the_same_names_and_labels_gets_its_own_cache(tmp_path):
    first = manifest_folder(tmp_path / "v1")
    second = manifest_folder(tmp_path / "v2")
    for name in os.listdir(os.path.join(second, "img")):  # other pictures, same names
        path = os.path.join(second, "img", name)
        _png(path, 999, size=20)
    keys = [run_cache.feature_cache_key(manifest_config(root, tmp_path / "cache"),
                                       run_data.load_data(manifest_config(root, tmp_path)))
            for root in (first, second)]
    assert keys[0].name != keys[1].name and keys[0].fingerprint != keys[1].fingerprint
    assert keys[0].inputs["splits"]["train"]["ids_labels"] == \
        keys[1].inputs["splits"]["train"]["ids_labels"]

    # A copy of the data (new file times, same bytes) is the same data.
    path = os.path.join(first, "img", "test_001.png")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    again = run_cache.feature_cache_key(manifest_config(first, tmp_path / "cache"),
                                       run_data.load_data(manifest_config(first, tmp_path)))
    assert again.fingerprint == keys[0].fingerprint


def test_the_benchmarks_fingerprint_is_the_one_its_caches_were_built_with(tmp_path):
    # The embedded benchmark is rebuilt identically in any cache_dir: known by ids and
    # labels only, in the format its existing caches carry.
    examples = [Example(str(i), _png(tmp_path / f"{i}.png", i), (i % 2,), (0.25,))
                for i in range(4)]
    splits, label_map = {"train": examples[:3], "test": examples[3:]}, LabelMap(["a", "b"])
    legacy = _legacy_fingerprint(splits, label_map, "efficientnet_lite0", "stage5")
    data = run_data.Data(splits, label_map)
    key = run_cache.feature_cache_key(ExperimentConfig(), data)
    assert key.fingerprint == legacy and key.inputs["format"] == 1
    os.utime(examples[0].image, ns=(1, 1))
    assert run_cache.feature_cache_key(ExperimentConfig(), data).fingerprint == legacy
    own = ExperimentConfig().replace(data={"dataset": "manifest", "data_dir": "x"})
    assert run_cache.feature_cache_key(own, data).fingerprint != legacy


@pytest.fixture
def no_backbone(monkeypatch):
    """Fails the test if a backbone is built: no feature is extracted."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was built: features would be extracted")

    monkeypatch.setattr(cache, "get_backbone", refuse)


def _extract(monkeypatch, backbone, config, data, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(cache, "get_backbone", lambda *args, **kw: backbone)
        return pipeline.prepare_features(config, data, **kwargs)


def test_a_new_run_extracts_beside_a_cache_of_an_earlier_format_saying_why(
        tmp_path, monkeypatch, tiny_backbone, no_backbone, capsys):
    root = manifest_folder(tmp_path / "data")
    config = manifest_config(root, tmp_path / "cache")
    data = run_data.load_data(config)
    legacy = _legacy_fingerprint(data.splits, data.label_map, "efficientnet_lite0", "stage5")
    old_dir = cache.features_dir(str(tmp_path / "cache"), cache.cache_name(
        "manifest", "efficientnet_lite0", "stage5", legacy))
    with monkeypatch.context() as patch:
        patch.setattr(cache, "get_backbone", lambda *args, **kw: tiny_backbone)
        cache.ensure_features(data.splits, data.label_map, old_dir, "efficientnet_lite0",
                              "stage5", legacy, num_shards=1)
    directory, _ = _extract(monkeypatch, tiny_backbone, config, data)
    assert directory != old_dir and os.path.isdir(old_dir)
    assert (f"{old_dir} holds these image ids and labels, built by an earlier version whose "
            f"cache fingerprint did not cover the image files") in capsys.readouterr().err

    # A run trained on it resumes with it, extracting nothing.
    workdir = tmp_path / "run"
    facts = RunFacts(label_names=data.label_map.names, max_steps=2, label_order=None,
                     small_area=None, features_name=os.path.basename(old_dir),
                     features_fingerprint=legacy, feature_shape=(4, 4, 8), image_size=32,
                     feature_layer=describe_backbone("efficientnet_lite0", "stage5")[
                         "feature_layer"])
    RunDir(str(workdir)).save(config, facts)
    directory, resumed = pipeline.prepare_features(config, data, RunDir(str(workdir)))
    assert directory == old_dir and resumed.features_fingerprint == legacy


# -- a rerun on an existing run folder ----------------------------------------------------
@pytest.fixture
def trained_folder(tmp_path, monkeypatch, tiny_backbone):
    """`(config, workdir)`: a run folder whose features were extracted (no training)."""
    root = manifest_folder(tmp_path / "data", train=12, test=4, val=3)
    config = manifest_config(root, tmp_path / "cache")
    _, facts = _extract(monkeypatch, tiny_backbone, config, run_data.load_data(config))
    RunDir(str(tmp_path / "run")).save(config, facts)
    return config, str(tmp_path / "run")


def test_a_resume_that_cannot_find_its_data_says_where_the_path_came_from(
        tmp_path, trained_folder, no_backbone):
    config, workdir = trained_folder
    os.rename(config.data.data_dir, tmp_path / "moved")  # or a relative path, read elsewhere
    with pytest.raises(DataNotFoundError, match=r"no manifest for split 'train'.*a rerun takes "
                                                r"its data flags from .*run/run.json, relative "
                                                r"paths read from the current folder"):
        pipeline.run(config, workdir, "train")


def test_a_resume_on_changed_data_is_refused_before_any_extraction(
        tmp_path, trained_folder, no_backbone):
    config, workdir = trained_folder
    root = config.data.data_dir
    with open(os.path.join(root, "train.csv"), "w") as f:  # two rows fewer
        f.write(_rows("train", range(10)))
    with pytest.raises(run_cache.RunDataChangedError,
                       match=r"run.json: the data at .* differ from those the run was trained "
                             r"on, refused before any feature extraction: train: 10 images "
                             r"now, 12 then\. Resume on the data the run was trained with"):
        pipeline.run(config.replace(stage2={"epochs": 3}), workdir, "train")
    assert issubclass(run_cache.RunDataChangedError, IncompatibleRunError)  # a usage error

    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write(_rows("train", range(12)))
    _png(os.path.join(root, "img", "val_001.png"), 5, size=24)  # re-encoded in place
    with pytest.raises(run_cache.RunDataChangedError,
                       match=r"val: the same 3 image ids and labels, but image files that "
                             r"differ in size"):
        pipeline.run(config, workdir, "train")

    _png(os.path.join(root, "img", "val_001.png"), _seed("val", 1))
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write(_rows("train", range(12), labels=lambda i: "c" if i == 0 else "ab"[i % 2]))
    with pytest.raises(run_cache.RunDataChangedError,
                       match=r"class names: 2 classes in the run, 3 now, added \['c'\]"):
        pipeline.run(config, workdir, "train")
    assert len(os.listdir(tmp_path / "cache" / "features")) == 1  # nothing extracted


def test_a_resume_whose_cache_is_not_under_cache_dir_is_refused_as_eval_does(
        tmp_path, trained_folder, no_backbone):
    config, workdir = trained_folder
    elsewhere = config.replace(runtime={"cache_dir": str(tmp_path / "default")})
    for mode in ("train", "eval"):
        with pytest.raises(cache.FeatureCacheNotFoundError,
                           match=r"no feature cache at .*default/features/manifest-.*: point "
                                 r"--runtime.cache_dir at the cache the run was trained with"):
            if mode == "eval":  # what eval mode checks first, for a run not trained yet
                run_cache.locate_features(elsewhere, RunDir(workdir).load()[1])
            else:
                pipeline.run(elsewhere, workdir, mode)
    # The remedy is the run's own: commands that extract its features again there, from
    # the data where this command reads them (moved since the run, it may be).
    with pytest.raises(cache.FeatureCacheNotFoundError) as refused:
        pipeline.run(elsewhere, workdir, "train")
    root = config.data.data_dir
    assert (f"ofrnn-train --workdir={workdir} --data.data_dir={root} "
            f"--runtime.cache_dir={tmp_path / 'default'} --print_config > run_flags.txt && "
            f"ofrnn-extract --flagfile=run_flags.txt" in str(refused.value))
    shutil.copytree(root, tmp_path / "moved data")
    moved = elsewhere.replace(data={"data_dir": str(tmp_path / "moved data")})
    with pytest.raises(cache.FeatureCacheNotFoundError) as refused:
        pipeline.run(moved, workdir, "eval")
    assert (f"ofrnn-train --workdir={workdir} '--data.data_dir={tmp_path / 'moved data'}' "
            f"--runtime.cache_dir={tmp_path / 'default'} --print_config" in str(refused.value))
    assert not (tmp_path / "default").exists()
    # Where it was trained, the same data resume (up to training, stubbed here).
    directory, facts = pipeline.prepare_features(config, run_data.load_data(config),
                                                 RunDir(workdir))
    assert facts == RunDir(workdir).load()[1] and os.path.isdir(directory)


@pytest.mark.slow
def test_the_command_refuses_a_resume_without_the_runs_cache_dir_in_one_line(
        tmp_path, trained_folder):
    config, workdir = trained_folder
    done = run_checked([sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}",
                        f"--runtime.cache_dir={tmp_path / 'default'}"], expect_failure=True)
    assert "train.py: no feature cache at" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "features train:" not in done.stderr
    assert not (tmp_path / "default" / "features").exists()


# -- eval mode reads the run's cached test split: the data named must be the run's --------
def test_eval_mode_refuses_data_other_than_the_runs(tmp_path, trained_folder, no_backbone):
    config, workdir = trained_folder
    root = config.data.data_dir
    with open(os.path.join(root, "test.csv"), "w") as f:  # every test image relabelled
        f.write(_rows("test", range(4), labels=lambda i: "b"))
    with pytest.raises(run_cache.RunDataChangedError,
                       match=r"the data at .* differ from those the run was trained on.*test: "):
        pipeline.run(config, workdir, "eval")
    other = manifest_folder(tmp_path / "other", train=12, test=5, val=3)
    with pytest.raises(run_cache.RunDataChangedError, match=r"test: 5 images now, 4 then"):
        pipeline.run(config.replace(data={"data_dir": other}), workdir, "eval")
    missing = str(tmp_path / "nonexistent")
    with pytest.raises(run_cache.RunDataChangedError,
                       match=rf"{missing} not found\. --mode=eval scores the test split of the "
                             rf"run's feature cache, extracted from {root}"):
        pipeline.run(config.replace(data={"data_dir": missing}), workdir, "eval")


def test_eval_mode_of_a_run_whose_training_split_grew_since_scores_its_cache(
        tmp_path, trained_folder, no_backbone, capsys):
    """Eval reads only the validation and test splits: more training images are noted."""
    config, workdir = trained_folder
    root = config.data.data_dir
    _png(os.path.join(root, "img", "train_012.png"), _seed("train", 12))
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write(_rows("train", range(13)))
    run_cache.check_evaluated_data(config, RunDir(workdir))
    assert re.search(r": train: 13 images now, 12 then, since the run was trained; --mode=eval "
                     r"reads the validation and test splits of the run's feature cache",
                     capsys.readouterr().err)
    with open(os.path.join(root, "val.csv"), "w") as f:  # and one split it reads
        f.write(_rows("val", range(2)))
    with pytest.raises(run_cache.RunDataChangedError, match=r"train: 13 images now, 12 then; "
                                                           r"val: 2 images now, 3 then"):
        run_cache.check_evaluated_data(config, RunDir(workdir))


def test_eval_mode_of_a_run_moved_without_its_images_scores_its_cache(
        tmp_path, trained_folder, no_backbone, capsys):
    config, workdir = trained_folder
    root = config.data.data_dir
    os.rename(os.path.join(root, "img"), tmp_path / "images")  # the lists without the images
    run_cache.check_evaluated_data(config, RunDir(workdir))
    said = capsys.readouterr().err
    assert re.search(r"train.csv: none of the 12 labelled images exists \(first: .*img/\w+\.png"
                     r".*, nor any other image it lists \(a run moved without its images\): "
                     r"scoring the validation and test splits of the run's feature cache, "
                     r"with the labels the run was trained with", said), said
    os.rename(root, tmp_path / "elsewhere")
    run_cache.check_evaluated_data(config, RunDir(workdir))
    assert "is not found here: scoring the test split of the run's feature cache" in (
        capsys.readouterr().err)


def test_eval_mode_compares_data_whose_missing_images_were_missing_at_training(
        tmp_path, monkeypatch, tiny_backbone, no_backbone, capsys):
    """As a NUS-WIDE copy, where many listed Flickr files never came: dropped when the run
    was trained, and again when eval mode compares the lists."""
    root = manifest_folder(tmp_path / "data", train=12, test=5, val=3)
    for name in ("train_004.png", "test_001.png"):
        os.remove(os.path.join(root, "img", name))
    config = manifest_config(root, tmp_path / "cache")
    _, facts = _extract(monkeypatch, tiny_backbone, config, run_data.load_data(config))
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.save(config, facts)
    capsys.readouterr()
    run_cache.check_evaluated_data(config, run_dir)  # the same data: no refusal
    assert "scoring the test split of the run's feature cache" not in capsys.readouterr().err
    with open(os.path.join(root, "test.csv"), "w") as f:  # one test image relabelled
        f.write(_rows("test", range(5)).replace("test_000.png,a;b", "test_000.png,b"))
    with pytest.raises(run_cache.RunDataChangedError,
                       match=r"test: other image ids or labels \(as many images, 4\)\. "
                             r"Evaluate on the data the run was trained with"):
        run_cache.check_evaluated_data(config, run_dir)
    with open(os.path.join(root, "test.csv"), "w") as f:
        f.write(_rows("test", range(5)))
    # Images lost since: the labels of those left cannot be told from other labels.
    os.remove(os.path.join(root, "img", "test_002.png"))
    with pytest.raises(run_cache.RunDataChangedError, match=r"test: 3 images now, 4 then"):
        run_cache.check_evaluated_data(config, run_dir)
    for i in range(5):  # every test image lost, the training images still here
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(root, "img", f"test_{i:03d}.png"))
    with pytest.raises(ImagesNotFoundError, match=r"test.csv: none of the \d labelled images"):
        run_cache.check_evaluated_data(config, run_dir)


def test_a_run_whose_class_names_are_in_another_unicode_form_resumes_and_evaluates(
        tmp_path, monkeypatch, tiny_backbone, capsys):
    # Trained when names were read as the files spelt them: "Café" in NFD (macOS).
    nfd = "Cafe\u0301"
    root = manifest_folder(tmp_path / "data")
    for split in ("train", "test", "val"):
        path = os.path.join(root, f"{split}.csv")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace(",a", f",{nfd}").replace(";a", f";{nfd}").replace("a;", f"{nfd};"))
    config = manifest_config(root, tmp_path / "cache")
    data = run_data.load_data(config)
    assert "Café" in data.label_map.names  # read in NFC now
    old = run_data.Data(data.splits, LabelMap([nfd if n == "Café" else n
                                               for n in data.label_map.names]))
    _, facts = _extract(monkeypatch, tiny_backbone, config, old)
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.save(config, facts)
    run_cache.check_evaluated_data(config, run_dir)  # no refusal
    assert "Unicode NFC form, in another order ('Cafe\\u0301' in the run)" in (
        run_cache._label_change(("Cafe\u0301", "Cafez"), ("Cafez", "Café")))
    _, again = _extract(monkeypatch, tiny_backbone, config, run_data.load_data(config),
                        resumed=run_dir)
    assert again == facts
    # A new run extracts its own cache (names in NFC), saying why.
    capsys.readouterr()
    directory, _ = _extract(monkeypatch, tiny_backbone, config, run_data.load_data(config))
    assert os.path.basename(directory) != facts.features_name
    assert (f"{cache.features_dir(config.runtime.cache_dir, facts.features_name)} holds these "
            f"image ids and labels, built by an earlier version that kept the class names in "
            f"the Unicode form of their files") in capsys.readouterr().err


def test_a_class_no_training_image_carries_is_named_when_training_starts(
        tmp_path, monkeypatch, tiny_backbone, capsys):
    # As a COCO category no annotation uses, or a rare class all held out for test.
    root = manifest_folder(tmp_path / "data")
    config = manifest_config(root, tmp_path / "cache")
    data = run_data.load_data(config)
    unused = run_data.Data(data.splits, LabelMap([*data.label_map.names, "unicorn"]))
    _extract(monkeypatch, tiny_backbone, config, unused)
    assert ("train: no training image carries 1 of the 3 classes ('unicorn'): the model "
            "cannot learn them") in capsys.readouterr().err



def test_a_class_no_validation_image_carries_is_named_when_training_starts(
        tmp_path, monkeypatch, tiny_backbone, capsys):
    # A val.csv written by hand that misses a class: validation chooses the epoch and τ.
    root = manifest_folder(tmp_path / "data")
    config = manifest_config(root, tmp_path / "cache")
    data = run_data.load_data(config)
    _extract(monkeypatch, tiny_backbone, config, data)
    assert "no validation image carries" not in capsys.readouterr().err
    gone = data.splits["val"][0].label_ids[0]
    val = [dataclasses.replace(e, label_ids=tuple(k for k in e.label_ids if k != gone),
                               label_areas=None) for e in data.splits["val"]]
    val = [e for e in val if e.label_ids]
    assert val and not any(gone in e.label_ids for e in val)
    lacking = run_data.Data({**data.splits, "val": val}, data.label_map)
    _extract(monkeypatch, tiny_backbone, config, lacking)
    name = data.label_map.names[gone]
    assert (f"val: no validation image carries 1 of the 2 classes ({name!r}): the validation "
            f"scores that choose the epoch kept and τ count each as precision 0, so C-P there "
            f"is at most 50.0") in capsys.readouterr().err

def test_a_beam_wider_than_the_label_paths_is_refused_before_any_work(
        tmp_path, trained_folder, no_backbone):
    # Two classes, at most two labels an image: 2 paths. A wider beam's extra rows stay
    # empty; a 20-digit one overflowed the graph.
    config, workdir = trained_folder
    wide = config.replace(decoding={"beam_size": 4})
    said = (r"^--decoding.beam_size=4 is wider than the 2 distinct label paths of T_max = 2 "
            r"labels from C = 2 classes .*; use at most 3 \(the default 3 is taken on any "
            r"data\)$")
    with pytest.raises(IncompatibleRunError, match=said):
        run_data.load_data(wide)
    with pytest.raises(IncompatibleRunError, match=said):  # from run.json, before the weights
        pipeline.run(wide, workdir, "eval")
    run_data.load_data(config)  # the default width, 3, runs on any data
    run_data.check_beam_size(wide.replace(model={"variant": "baseline"}), 2, 2)  # no beam


def test_min_labels_above_t_max_is_refused_before_any_extraction(tmp_path, no_backbone):
    root = manifest_folder(tmp_path / "data")  # at most two labels an image: T_max = 2
    config = manifest_config(root, tmp_path / "cache").replace(decoding={"min_labels": 3})
    with pytest.raises(IncompatibleRunError,
                       match=r"--decoding.min_labels=3 cannot hold: a prediction has at most "
                             r"T_max = 2 labels .*; use at most 2"):
        pipeline.run(config, str(tmp_path / "run"), "train")
    assert not (tmp_path / "cache" / "features").exists()
    # M_map alone (the baseline) labels every class above τ: it can give all C = 3 (one
    # class no training image carries, as T_max = 2 stays).
    data = run_data.load_data(config.replace(decoding={"min_labels": 1}))
    wider = run_data.Data(data.splits, LabelMap([*data.label_map.names, "unicorn"]))
    baseline = config.replace(model={"variant": "baseline"})
    classes, t_max = wider.label_map.num_classes, run_data.data_t_max(wider)
    run_data.check_min_labels(baseline, classes, t_max)
    with pytest.raises(IncompatibleRunError, match=r"at most T_max = 2 labels"):
        run_data.check_min_labels(config, classes, t_max)
    with pytest.raises(IncompatibleRunError,
                       match=r"--decoding.min_labels=4 cannot hold: a prediction has at most "
                             r"C = 3 labels \(the number of classes\); use at most 3"):
        run_data.check_min_labels(baseline.replace(decoding={"min_labels": 4}), classes, t_max)

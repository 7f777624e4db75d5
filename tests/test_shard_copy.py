"""A new feature cache takes the splits whose images an older cache holds from it,
relabelled, without the backbone; other splits, and other images, are extracted."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofrnn_tf import pipeline
from ofrnn_tf.data import run_data
from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data.example import Example
from ofrnn_tf.features import cache, shard_meta
from ofrnn_tf.features.shard_copy import copy_split
from ofrnn_tf.labels import LabelMap

NAMES = ("circle", "square", "stripe")
SIZES = {"train": 6, "val": 3, "test": 3}


def own_data(folder) -> run_data.Data:
    """Small PNGs, the first training one unreadable (skipped at extraction): a PNG whose
    first bytes are damaged, so that `repair` gives it back at its size."""
    os.makedirs(folder, exist_ok=True)
    splits = {}
    for split, count in SIZES.items():
        splits[split] = []
        for i in range(count):
            path = os.path.join(folder, f"{split}{i}.png")
            Image.fromarray(np.full((16, 16, 3), 30 * i + 5, np.uint8)).save(path)
            if split == "train" and i == 0:
                data = Path(path).read_bytes()
                Path(path).write_bytes(b"XXXX" + data[4:])
            splits[split].append(Example(f"{split}/{i}.png", path, (i % len(NAMES),)))
    return run_data.Data(splits, LabelMap(NAMES))


def repair(data: run_data.Data) -> None:
    """Mends the unreadable image at its size and time (a restore that keeps both)."""
    path = data.splits["train"][0].image
    damaged, stat = Path(path).read_bytes(), os.stat(path)
    Path(path).write_bytes(b"\x89PNG" + damaged[4:])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def relabelled(data: run_data.Data, split: str, index: int, label_ids) -> run_data.Data:
    splits = {s: list(e) for s, e in data.splits.items()}
    splits[split][index] = dataclasses.replace(splits[split][index], label_ids=label_ids)
    return dataclasses.replace(data, splits=splits)


def records(directory: str, split: str) -> list[tuple[str, bytes, tuple]]:
    """(image id, feature bytes, labels) of every record of a split, in order."""
    out = []
    for raw in tf.data.TFRecordDataset(shard_meta.shard_files(directory, split)):
        fields = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append((fields["image_id"].bytes_list.value[0].decode(),
                    fields["features"].bytes_list.value[0],
                    tuple(fields["labels"].int64_list.value)))
    return out


@pytest.fixture
def setting(tmp_path, monkeypatch, tiny_backbone):
    """`(config, data, runs)`: own data, and `runs` counting the backbone's builds."""
    runs = []

    def backbone(*args, **kwargs):
        runs.append(args)
        return tiny_backbone

    monkeypatch.setattr(cache, "get_backbone", backbone)
    config = ExperimentConfig().replace(
        data={"dataset": "manifest", "data_dir": str(tmp_path / "images")},
        train={"batch_size": 2}, features={"num_shards": 2},
        runtime={"cache_dir": str(tmp_path / "cache")})
    return config, own_data(tmp_path / "images"), runs


def test_a_fixed_label_copies_every_split_relabelled_without_the_backbone(setting, capsys):
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    assert len(runs) == 1
    fixed = relabelled(data, "train", 2, (0, 1))
    after, _ = pipeline.prepare_features(config, fixed)
    assert after != before and len(runs) == 1  # a new cache, and no backbone
    assert f"examples copied from {before} (the same images)" in capsys.readouterr().err
    for split in SIZES:
        old, new = records(before, split), records(after, split)
        assert [(i, f) for i, f, _ in new] == [(i, f) for i, f, _ in old]  # byte for byte
        want = {e.image_id: e.label_ids for e in fixed.splits[split]}
        assert [labels for i, _, labels in new] == [want[i] for i, _, _ in new]
    assert records(after, "train")[1][2] == (0, 1)
    meta = shard_meta.read_meta(after)
    assert [s["image_id"] for s in meta["splits"]["train"]["skipped"]] == ["train/0.png"]
    assert meta[cache.FINGERPRINT_KEY] != shard_meta.read_meta(before)[cache.FINGERPRINT_KEY]
    # The new cache is complete: a rerun reads it as it is.
    assert pipeline.prepare_features(config, fixed)[0] == after and len(runs) == 1


def test_a_split_of_other_images_is_extracted_and_the_others_copied(setting, capsys):
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data.splits["test"][1].image)
    after, _ = pipeline.prepare_features(config, data)  # the same labels, a repaired file
    assert after != before and len(runs) == 2
    err = capsys.readouterr().err
    assert err.count("examples copied from") == 2 and "test: 3 examples written" in err
    assert records(after, "train") == records(before, "train")
    assert records(after, "test")[1][1] != records(before, "test")[1][1]


def test_images_listed_under_other_ids_are_extracted_and_nothing_is_left_behind(setting):
    """The same files (so the same sizes) under other ids: the ids a source's records
    carry are checked, and a copy that does not match leaves no file."""
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    splits = {s: [dataclasses.replace(e, image_id="x" + e.image_id) for e in examples]
              for s, examples in data.splits.items()}
    after, _ = pipeline.prepare_features(config, dataclasses.replace(data, splits=splits))
    assert len(runs) == 2
    assert [i for i, _, _ in records(after, "val")] == ["xval/0.png", "xval/1.png", "xval/2.png"]
    assert not glob.glob(os.path.join(after, "*incomplete*"))


def test_copy_split_refuses_a_source_of_another_sharding_or_an_unfinished_split(setting,
                                                                                 tmp_path):
    config, data, _ = setting
    before, _ = pipeline.prepare_features(config, data)
    split = data.splits["val"]
    assert copy_split(before, split, data.label_map, str(tmp_path / "a"), "val",
                      num_shards=3) is None
    os.remove(shard_meta.shard_files(before, "val")[1])
    assert copy_split(before, split, data.label_map, str(tmp_path / "b"), "val",
                      num_shards=2) is None


def test_the_benchmark_and_caches_without_file_sizes_are_never_a_source(setting):
    config, data, _ = setting
    before, _ = pipeline.prepare_features(config, data)
    sibling = before[:-1] + ("0" if before[-1] != "0" else "1")  # a name of its length
    own = cache.describe_inputs(data.splits, data.label_map)
    assert list(cache.reusable_sources(sibling, "train", own, 2)) == [before]
    assert list(cache.reusable_sources(sibling, "train", own, 3)) == []
    # Two builds of the benchmark hold the same ids, whatever their images.
    bench_config = config.replace(data={"dataset": "fashion_canvases", "data_dir": ""})
    bench, _ = pipeline.prepare_features(bench_config, data)
    bench_sibling = bench[:-1] + ("0" if bench[-1] != "0" else "1")
    benchmark = cache.describe_inputs(data.splits, data.label_map, file_stats=False)
    assert list(cache.reusable_sources(bench_sibling, "train", benchmark, 2)) == []


def test_the_same_names_and_sizes_in_another_folder_are_other_images(setting, tmp_path):
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    other = own_data(tmp_path / "other")  # the same ids, files of the same sizes
    other = relabelled(other, "train", 2, (0, 2))
    after, _ = pipeline.prepare_features(config, other)
    assert after != before and len(runs) == 2


def test_files_rewritten_in_place_at_their_sizes_are_other_images(setting):
    """Data regenerated in their folder (the same names and sizes, new pixels and labels):
    the files' times tell the split apart; the untouched splits are still copied."""
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    later = os.stat(data.splits["train"][3].image).st_mtime_ns + 10**9
    os.utime(data.splits["train"][3].image, ns=(later, later))
    after, _ = pipeline.prepare_features(config, relabelled(data, "train", 3, (2,)))
    assert after != before and len(runs) == 2
    assert records(after, "val") == records(before, "val")


def test_a_cache_keeps_the_record_of_the_files_it_was_built_from(setting, tmp_path):
    """The same data in another folder find the cache by its fingerprint, and its meta.json
    is left as it is (it may be read-only); a later copy from it needs its own files."""
    config, data, _ = setting
    before, _ = pipeline.prepare_features(config, data)
    recorded = shard_meta.read_meta(before)[cache.INPUTS_KEY]
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(data.splits["train"][0].image), moved)
    splits = {s: [dataclasses.replace(e, image=str(moved / os.path.basename(e.image)))
                  for e in examples] for s, examples in data.splits.items()}
    again, _ = pipeline.prepare_features(config, dataclasses.replace(data, splits=splits))
    assert again == before and shard_meta.read_meta(before)[cache.INPUTS_KEY] == recorded


def test_a_repaired_image_the_source_skipped_is_extracted_not_copied_skipped(setting,
                                                                            capsys):
    config, data, runs = setting
    before, _ = pipeline.prepare_features(config, data)
    repair(data)  # at its old size: the cache still holds the data as they were
    after, _ = pipeline.prepare_features(config, relabelled(data, "val", 0, (2,)))
    assert len(runs) == 2 and "train: 6 examples written" in capsys.readouterr().err
    assert shard_meta.read_meta(after)["splits"]["train"]["skipped"] == []
    assert shard_meta.read_meta(before)["splits"]["train"]["skipped"]


def test_a_source_that_does_not_serve_gives_way_to_an_older_one(setting):
    config, data, runs = setting
    first, _ = pipeline.prepare_features(config, data)
    renamed = {s: [dataclasses.replace(e, image_id="x" + e.image_id) for e in examples]
               for s, examples in data.splits.items()}
    second, _ = pipeline.prepare_features(config, dataclasses.replace(data, splits=renamed))
    os.utime(first, (1, 1))  # the second is the newer: it is tried first and does not serve
    third, _ = pipeline.prepare_features(config, relabelled(data, "test", 0, (1, 2)))
    assert len(runs) == 2 and len({first, second, third}) == 3
    assert records(third, "train") == records(first, "train")


def test_copy_split_checks_the_label_ids_as_extraction_does(setting, tmp_path):
    config, data, _ = setting
    before, _ = pipeline.prepare_features(config, data)
    for label in (7, 3, -1):  # 3: one past the last of the 3 classes
        bad = relabelled(data, "val", 1, (label,)).splits["val"]
        with pytest.raises(ValueError, match=rf"example 1 \(image val/1.png\): label ids "
                                             rf"\[{label}\] outside the label map's 3 "
                                             rf"classes"):
            copy_split(before, bad, data.label_map, str(tmp_path / "c"), "val", num_shards=2)

"""The feature-cache reader: schema, batching, label maps, sharding, corrupt files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ofrnn_tf.features import shard_checks, shard_meta, tfrecords
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError

SHAPE = (2, 3, 4)  # H, W, k
LABELS = LabelMap(["cat", "dog", "bird", "fish"])


def _records(n: int):
    rng = np.random.RandomState(0)
    out = []
    for i in range(n):
        labels = sorted(rng.choice(4, size=1 + i % 3, replace=False).tolist())
        areas = None if i % 4 == 0 else [round(0.1 * (j + 1), 3) for j in range(len(labels))]
        out.append((f"img{i}", rng.randn(*SHAPE).astype(np.float32), labels, areas))
    return out


def _write_dir(path, records, num_shards=3, split="train", label_map=LABELS):
    os.makedirs(path, exist_ok=True)
    label_map.save(str(path))
    bounds = [i * len(records) // num_shards for i in range(num_shards + 1)]
    for s in range(num_shards):
        name = os.path.join(path, shard_meta.shard_filename(split, s, num_shards))
        with tf.io.TFRecordWriter(name) as w:
            for r in records[bounds[s]:bounds[s + 1]]:
                w.write(tfrecords.serialize_example(*r))
        shard_meta.write_shard_stats(str(path), split, s, num_shards,
                                    bounds[s + 1] - bounds[s], [])
    shard_meta.write_meta(str(path), {"backbone": "test", "feature_layer": "x",
                                     "image_size": 32, "feature_shape": list(SHAPE)})
    return str(path)


def _collect(ds):
    out = {}
    for batch in ds:
        for j, image_id in enumerate(batch["image_id"].numpy()):
            out[image_id.decode()] = {k: v[j].numpy() for k, v in batch.items()
                                      if k != "image_id"}
    return out


def test_round_trip_of_features_labels_and_areas(tmp_path):
    records = _records(10)
    d = _write_dir(tmp_path / "f", records)
    ds = tfrecords.make_dataset(d, "train", batch_size=4, label_map=LABELS)
    assert ds.options().autotune.enabled is False  # its thread would hold the iterator's end
    first = next(iter(ds))
    assert first["features"].shape == (4, 6, 4) and first["features"].dtype == tf.float32
    assert first["labels"].shape == (4, 4) and first["label_areas"].shape == (4, 4)
    got = _collect(ds)
    assert sorted(got) == sorted(r[0] for r in records)
    for image_id, feats, labels, areas in records:
        item = got[image_id]
        np.testing.assert_allclose(item["features"], feats.reshape(6, 4), rtol=1e-3, atol=1e-3)
        expected = np.zeros(4, np.float32)
        expected[labels] = 1
        np.testing.assert_array_equal(item["labels"], expected)
        expected_areas = np.zeros(4, np.float32)
        expected_areas[labels] = -1 if areas is None else areas
        np.testing.assert_allclose(item["label_areas"], expected_areas, rtol=1e-6)
    assert shard_meta.num_examples(d, "train") == 10


@pytest.mark.parametrize("num_shards", [1, 3])  # one file: fewer than the reading threads
def test_order_is_deterministic_without_shuffle(tmp_path, num_shards):
    d = _write_dir(tmp_path / "f", _records(11), num_shards=num_shards)
    ids = [list(_collect(tfrecords.make_dataset(d, "train", 3))) for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0]) == 11
    shuffled = tfrecords.make_dataset(d, "train", 3, shuffle=True, seed=1)
    assert sorted(_collect(shuffled)) == sorted(ids[0])


def test_shuffle_repeat_and_drop_remainder(tmp_path):
    d = _write_dir(tmp_path / "f", _records(10))
    ds = tfrecords.make_dataset(d, "train", 4, shuffle=True, repeat=True, seed=3,
                                drop_remainder=True)
    assert ds.element_spec["features"].shape == (4, 6, 4)
    ids = [i.decode() for b in ds.take(5) for i in b["image_id"].numpy()]
    assert len(ids) == 20 and set(ids) == {f"img{i}" for i in range(10)}
    once = tfrecords.make_dataset(d, "train", 4, shuffle=True, seed=3, cache=True)
    assert sorted(_collect(once)) == sorted(f"img{i}" for i in range(10))


@pytest.mark.parametrize("num_shards", [1, 2, 4])  # 2: one file for each worker
def test_input_context_splits_the_data_between_workers(tmp_path, num_shards):
    d = _write_dir(tmp_path / "f", _records(12), num_shards=num_shards)
    seen = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                         num_replicas_in_sync=2)
        ds = tfrecords.make_dataset(d, "train", batch_size=4, input_context=ctx)
        assert ds.element_spec["features"].shape[0] in (None, 2)
        seen.append(set(_collect(ds)))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"img{i}" for i in range(12)}


def test_a_different_label_map_is_refused_naming_both(tmp_path):
    d = _write_dir(tmp_path / "f", _records(4))
    other = LabelMap(["cat", "dog", "bird", "cow"], source="/elsewhere/label_map.json")
    with pytest.raises(LabelMapMismatchError, match="label_map.json.*elsewhere|elsewhere.*f/"):
        tfrecords.make_dataset(d, "train", 2, label_map=other)


def _record_starts(data: bytes) -> list[int]:
    """The byte offsets of a sound TFRecord file's records."""
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        offset += 12 + int.from_bytes(data[offset:offset + 8], "little") + 4
    return starts


@pytest.mark.parametrize("damage", ["garbage", "truncate", "cut_1_byte", "cut_4_bytes",
                                    "garbage_header", "length_one_off"])
def test_a_corrupt_shard_is_named_with_what_is_wrong(tmp_path, damage):
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 1, 3))
    data = bytearray(Path(shard).read_bytes())
    starts = _record_starts(bytes(data))
    second, last = starts[1], starts[-1]
    assert len(starts) == 3 and second < last
    truncated = f"record at byte {last} runs past the end of the file (truncated)"
    bad_header = f"bad record header at byte {second} (garbled or not a TFRecord file)"
    if damage == "garbage":
        data = os.urandom(len(data))
        reason = "bad record header at byte 0"
    elif damage.startswith("cut") or damage == "truncate":
        # 1 to 4 bytes lose only the last record's data CRC; 7 bytes, some of its data too.
        data = data[:len(data) - {"truncate": 7, "cut_1_byte": 1, "cut_4_bytes": 4}[damage]]
        reason = truncated
    elif damage == "garbage_header":  # a length far past the end of the file
        data[second:second + 8] = b"\xff" * 8
        reason = bad_header
    else:  # a length one off, still inside the file: only the header's CRC shows it
        data[second] ^= 0x01
        reason = bad_header
    with open(shard, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(shard_checks.CorruptShardError,
                       match=re.escape(f"corrupt feature shard {shard}: {reason}")):
        tfrecords.make_dataset(d, "train", 2)


def test_a_garbled_payload_is_named_by_the_full_check(tmp_path):
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 0, 3))
    data = bytearray(Path(shard).read_bytes())
    data[30:40] = b"0123456789"  # inside the first record's payload
    with open(shard, "wb") as f:
        f.write(bytes(data))
    tfrecords.make_dataset(d, "train", 2)  # headers are intact
    with pytest.raises(shard_checks.CorruptShardError, match=os.path.basename(shard)):
        tfrecords.make_dataset(d, "train", 2, verify_shards="full")


def test_an_incomplete_split_is_refused_listing_the_missing_shards(tmp_path):
    d = _write_dir(tmp_path / "f", _records(6))
    os.remove(os.path.join(d, shard_meta.shard_filename("train", 2, 3)))
    assert shard_meta.read_meta(d)["splits"]["train"]["complete"] is False
    with pytest.raises(ValueError, match="train-00002-of-00003"):
        tfrecords.make_dataset(d, "train", 2)


def test_unknown_split_and_missing_meta(tmp_path):
    d = _write_dir(tmp_path / "f", _records(3))
    with pytest.raises(ValueError, match="no finished shard of split 'val'"):
        tfrecords.make_dataset(d, "val", 2)
    with pytest.raises(FileNotFoundError, match="meta.json.*`ofrnn-extract`"):
        shard_meta.read_meta(str(tmp_path))


@pytest.mark.parametrize("verify", [True, "full"], ids=["headers", "full"])
@pytest.mark.parametrize("cut", ["to_0_bytes", "at_a_record_boundary"])
def test_a_shard_cut_short_between_records_is_named_with_its_remedy(tmp_path, cut, verify):
    # Record by record such a file is sound; only its .json's count shows what is lost.
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 1, 3))
    data = Path(shard).read_bytes()
    first_record = 12 + int.from_bytes(data[:8], "little") + 4
    with open(shard, "wb") as f:
        f.write(b"" if cut == "to_0_bytes" else data[:first_record])
    records = 0 if cut == "to_0_bytes" else 1
    with pytest.raises(shard_checks.CorruptShardError) as error:
        tfrecords.make_dataset(d, "train", 2, verify_shards=verify)
    assert error.value.path == shard
    assert str(error.value) == (
        f"corrupt feature shard {shard}: {records} records, but its .json records 3 (the file "
        f"was cut short) -- delete {shard} and rerun: the next run re-extracts only that shard")
    assert shard_checks.find_corrupt_shard(d, "train").path == shard


@pytest.mark.parametrize("verify", [True, "full"], ids=["headers", "full"])
def test_a_shard_with_records_added_is_named_too(tmp_path, verify):
    # Epochs would be counted from the .json and read from the file: they would disagree.
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 1, 3))
    data = Path(shard).read_bytes()
    first_record = 12 + int.from_bytes(data[:8], "little") + 4
    with open(shard, "ab") as f:
        f.write(data[:first_record])  # a sound record, once more
    with pytest.raises(shard_checks.CorruptShardError) as error:
        tfrecords.make_dataset(d, "train", 2, verify_shards=verify)
    assert str(error.value).startswith(
        f"corrupt feature shard {shard}: 4 records, but its .json records 3 (records were "
        f"added to it) -- delete {shard} and rerun")


def test_a_shard_of_no_examples_passes_the_check(tmp_path):
    d = _write_dir(tmp_path / "f", _records(2), num_shards=3)  # shard 0 is empty
    assert len(_collect(tfrecords.make_dataset(d, "train", 2, verify_shards="full"))) == 2


def test_a_missing_or_unreadable_stats_file_is_named(tmp_path):
    d = _write_dir(tmp_path / "f", _records(6))
    missing = os.path.join(d, shard_meta.shard_stats_filename("train", 0, 3))
    garbled = os.path.join(d, shard_meta.shard_stats_filename("train", 2, 3))
    os.remove(missing)
    with open(garbled, "w") as f:
        f.write('{"split": "tr')
    # A feature cache's damage: each command says it in one line (`cli.input_errors`).
    with pytest.raises(shard_meta.FeatureCacheDamagedError) as error:
        tfrecords.make_dataset(d, "train", 2)
    assert str(error.value) == (
        f"{d}: split 'train' is incomplete: train-00000-of-00003.tfrecord has no stats file: "
        f"{missing} is missing; the stats file of train-00002-of-00003.tfrecord is unreadable: "
        f"{garbled}: not valid JSON (Unterminated string starting at: line 1 column 11 (char "
        f"10)); rerun the extraction (`ofrnn-extract` or training) to extract those shards")


def test_a_corrupt_meta_json_is_named_with_its_remedy(tmp_path):
    d = _write_dir(tmp_path / "f", _records(3))
    meta = os.path.join(d, shard_meta.META_FILENAME)
    with open(meta, "w") as f:
        f.write("")
    with pytest.raises(shard_meta.FeatureCacheDamagedError,
                       match=f"^{meta}: not valid JSON .*; delete it and rerun the extraction, "
                             f"which writes it again: `ofrnn-extract` with the run's"):
        shard_meta.read_meta(d)


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_lost_cache_label_map_is_named_with_its_remedy(tmp_path, damage):
    from ofrnn_tf.cli import input_errors

    d = _write_dir(tmp_path / "f", _records(3))
    path = os.path.join(d, "label_map.json")
    if damage == "missing":
        os.remove(path)
    else:
        with open(path, "w") as f:
            f.write("{")
    with pytest.raises(shard_meta.FeatureCacheDamagedError,
                       match=rf"{path}.*: the feature cache {d} cannot say which classes its "
                             rf"labels are; delete the folder {d} and rerun"):
        tfrecords.make_dataset(d, "train", 2)
    # The commands say it, and a corrupt shard, in one line.
    assert {shard_meta.FeatureCacheDamagedError, shard_checks.CorruptShardError} <= set(input_errors())


@pytest.mark.parametrize("seed", [None, 5])
def test_shuffling_workers_with_fewer_files_than_workers_share_no_record(tmp_path, seed):
    # Records are split between workers before any shuffle: each worker shuffling its own
    # file order first would take every n-th record of a different sequence.
    d = _write_dir(tmp_path / "f", _records(12), num_shards=3)
    for _ in range(3):
        seen = []
        for worker in range(4):
            ctx = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=worker,
                                             num_replicas_in_sync=4)
            seen += list(_collect(tfrecords.make_dataset(d, "train", 4, shuffle=True,
                                                         seed=seed, input_context=ctx)))
        assert sorted(seen) == sorted(f"img{i}" for i in range(12))


def test_check_shard_counts_records(tmp_path):
    d = _write_dir(tmp_path / "f", _records(7), num_shards=1)
    assert shard_checks.check_shard(os.path.join(d, shard_meta.shard_filename("train", 0, 1))) == 7


def _garble_payload(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[30:40] = b"0123456789"  # inside the first record's payload; headers stay sound
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_a_garbled_payload_met_while_reading_is_named_with_its_remedy(tmp_path):
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 1, 3))
    _garble_payload(shard)
    dataset = tfrecords.make_dataset(d, "train", 2)  # the header walk passes it
    with pytest.raises(shard_checks.CorruptShardError) as error:
        with shard_checks.naming_corrupt_shards(d, "train"):
            for _ in dataset:
                pass
    assert error.value.path == shard
    assert str(error.value) == (f"corrupt feature shard {shard}: corrupted record at 12 -- delete "
                                f"{shard} and rerun: the next run re-extracts only that shard")
    assert isinstance(error.value.__cause__, tf.errors.DataLossError)


def test_naming_corrupt_shards_reads_no_shard_without_an_error_and_passes_on_others(
        tmp_path, monkeypatch):
    d = _write_dir(tmp_path / "f", _records(9))
    checked = []
    check_shard = shard_checks.check_shard
    monkeypatch.setattr(shard_checks, "check_shard",
                        lambda path, full=False: checked.append(full) or check_shard(path, full))
    with shard_checks.naming_corrupt_shards(d, "train"):
        assert len(list(tfrecords.make_dataset(d, "train", 4, verify_shards=False))) == 3
    assert checked == []  # the fast path reads nothing more
    with pytest.raises(tf.errors.DataLossError, match="a checkpoint's, say"):
        with shard_checks.naming_corrupt_shards(d, "train"):  # the shards are sound
            raise tf.errors.DataLossError(None, None, "a checkpoint's, say")
    assert checked == [True] * 3


def test_deleting_a_corrupt_shard_makes_the_next_run_extract_only_that_one(
        tmp_path, tiny_backbone, monkeypatch, sample_images):
    from ofrnn_tf.data.example import Example
    from ofrnn_tf.features import cache

    good = [p for p in sample_images if p.name != "broken.jpg"]
    examples = [Example(f"im{i}", str(good[i % len(good)]), (i % 4,)) for i in range(6)]
    directory = str(tmp_path / "features")
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: tiny_backbone)
    summaries = []
    extract_split = cache.extract_split
    monkeypatch.setattr(cache, "extract_split",
                        lambda *a, **k: summaries.append(extract_split(*a, **k)) or summaries[-1])

    def ensure():
        return cache.ensure_features({"train": examples}, LABELS, directory, "tiny", "maps",
                                     "f" * 64, batch_size=4, num_shards=3)

    ensure()
    paths = shard_meta.shard_files(directory, "train")
    before = {p: (os.stat(p).st_mtime_ns, Path(p).read_bytes()) for p in paths}
    _garble_payload(paths[1])
    with pytest.raises(shard_checks.CorruptShardError, match="delete .* and rerun") as error:
        with shard_checks.naming_corrupt_shards(directory, "train"):
            list(tfrecords.make_dataset(directory, "train", 2))
    os.remove(error.value.path)
    ensure()
    assert summaries[-1].shards_already_done == [0, 2] and summaries[-1].shards_written == [1]
    for path, (mtime, data) in before.items():
        assert Path(path).read_bytes() == data  # the rebuilt shard is the one it was
        if path != paths[1]:
            assert os.stat(path).st_mtime_ns == mtime
    assert len(list(tfrecords.make_dataset(directory, "train", 6, verify_shards="full"))) == 1


def _with_value_in_record(path: str, index: int, value: float) -> str:
    """Rewrites record `index` of the shard at `path` with `value` in its features, as
    no writer of this package would; returns its image id."""
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = tf.train.Example.FromString(records[index])
    feature = example.features.feature
    values = np.frombuffer(feature["features"].bytes_list.value[0], "<f2").copy()
    values[3] = value
    feature["features"].bytes_list.value[0] = values.tobytes()
    records[index] = example.SerializeToString()
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return feature["image_id"].bytes_list.value[0].decode()


@pytest.mark.parametrize("value, held", [(np.nan, "NaN"), (-np.inf, "an Inf")])
@pytest.mark.parametrize("features_dtype", [tf.float32, tf.float16])  # evaluation's, training's
def test_a_record_holding_nan_or_inf_is_named_by_shard_record_and_image(tmp_path, value, held,
                                                                        features_dtype):
    d = _write_dir(tmp_path / "f", _records(9))
    shard = os.path.join(d, shard_meta.shard_filename("train", 1, 3))
    image_id = _with_value_in_record(shard, 2, value)
    parse = tfrecords.parse_batch_fn(d, features_dtype)
    dataset = tfrecords.record_dataset(d, "train").batch(4).map(parse)
    with pytest.raises(tf.errors.InvalidArgumentError, match=image_id):  # outside: the image
        list(dataset)
    with pytest.raises(shard_checks.CorruptShardError) as error:
        with shard_checks.naming_corrupt_shards(d, "train"):
            list(dataset)
    assert error.value.path == shard
    assert str(error.value) == (
        f"corrupt feature shard {shard}: record 2 (image {image_id!r}) holds {held} in its "
        f"features -- delete {shard} and rerun: the next run re-extracts only that shard")
    assert isinstance(error.value.__cause__, tf.errors.InvalidArgumentError)


def test_an_invalid_argument_error_of_another_cause_goes_on_unchanged(tmp_path):
    d = _write_dir(tmp_path / "f", _records(3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a shape, say"):
        with shard_checks.naming_corrupt_shards(d, "train"):
            raise tf.errors.InvalidArgumentError(None, None, "a shape, say")


@pytest.mark.parametrize("value, held", [(np.nan, "NaN"),
                                         (7e4, "a value beyond float16's ±65504")])
def test_a_record_of_features_float16_cannot_hold_is_refused_naming_the_image(value, held):
    from ofrnn_tf.data import DataFileError

    features = np.ones([2, 3, 4], np.float32)
    features[1, 2, 3] = value  # 7e4 would be stored as inf
    with pytest.raises(DataFileError, match=f"^image img/7.jpg: its feature maps hold {held}, "
                                            f"which the float16 feature cache cannot store"):
        tfrecords.serialize_example("img/7.jpg", features, [1])


@pytest.mark.parametrize("drop_remainder, batches", [(False, 4), (True, 3)])
def test_a_split_read_once_knows_its_number_of_batches(tmp_path, drop_remainder, batches):
    # So the progress bars of evaluation show a total and an ETA.
    d = _write_dir(tmp_path / "f", _records(11))
    ds = tfrecords.make_dataset(d, "train", 3, drop_remainder=drop_remainder)
    assert int(ds.cardinality()) == batches == len(list(ds))
    assert int(tfrecords.make_dataset(d, "train", 3, repeat=True).cardinality()) < 0


def test_a_record_refuses_areas_that_do_not_pair_with_its_labels_and_a_label_twice():
    features = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="image x: 1 label areas for 2 labels"):
        tfrecords.serialize_example("x", features, [1, 2], [0.5])
    # Parsed, a label listed twice would be one positive with its areas summed.
    with pytest.raises(ValueError, match=r"image x: label id 1 listed twice"):
        tfrecords.serialize_example("x", features, [1, 1, 3], [0.2, 0.2, 0.5])


@pytest.mark.parametrize("content", [{"names": "cat"}, {"classes": ["a", "b"]}, "cat"])
def test_a_label_map_file_whose_names_are_not_a_list_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "label_map.json"
    path.write_text(json.dumps(content))  # {"names": "cat"} would be the classes c, a, t
    with pytest.raises(ValueError, match=r"label_map.json: expected \{'names': \[...\]\}"):
        LabelMap.load(str(path))


def test_a_split_two_commands_sharded_differently_at_once_reads_its_complete_set(tmp_path):
    # Begun together with other --features.num_shards, two extractions each write a set.
    records = _records(12)
    d = _write_dir(tmp_path / "f", records, num_shards=2)
    _write_dir(tmp_path / "f", records, num_shards=3)
    assert shard_meta.read_meta(d)["splits"]["train"]["num_shards"] == 3  # both complete
    os.remove(os.path.join(d, shard_meta.shard_filename("train", 1, 3)))  # one still running
    meta = shard_meta.read_meta(d)["splits"]["train"]
    assert meta["num_shards"] == 2 and meta["complete"] and meta["num_examples"] == 12
    assert sorted(_collect(tfrecords.make_dataset(d, "train", 5))) == sorted(
        r[0] for r in records)
    os.remove(os.path.join(d, shard_meta.shard_filename("train", 1, 2)))  # neither is whole
    meta = shard_meta.read_meta(d)["splits"]["train"]
    assert (meta["num_shards"], meta["finished_shards"], meta["complete"]) == (3, 2, False)


@pytest.mark.slow
def test_a_record_is_the_same_bytes_in_every_process():
    # protobuf writes a map in an order of its own per process unless asked not to: a
    # rebuilt cache would hold the same values in other bytes (checksums would differ).
    make = ("from ofrnn_tf.features.tfrecords import serialize_example; import numpy as np; "
            "print(serialize_example('img/7.jpg', np.arange(24).reshape(2, 3, 4), [1, 3], "
            "[0.5, 0.25]).hex())")
    here = tfrecords.serialize_example("img/7.jpg", np.arange(24).reshape(2, 3, 4), [1, 3],
                                       [0.5, 0.25])
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True,
                              timeout=120, check=True)
        assert bytes.fromhex(done.stdout.strip()) == here


def test_features_rounded_as_stored_are_a_float16_cast_bit_for_bit():
    from ofrnn_tf.features.tfrecords import as_stored

    rng = np.random.default_rng(0)
    every_kind = rng.integers(-2 ** 31, 2 ** 31, size=200_000, dtype=np.int64).astype(np.int32)
    edges = np.array([0.0, -0.0, 65504, 65519.99, 65520, 65536, 6.1e-5, 6.0e-5, 5.96e-8,
                      2.98e-8, 2.99e-8, 1e-45, np.inf, -np.inf, np.nan], np.float32)
    x = np.concatenate([every_kind.view(np.float32), edges,
                        (rng.standard_normal(100_000) * 3).astype(np.float32),
                        (rng.standard_normal(100_000) * 1e-5).astype(np.float32)])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    got = as_stored(tf.constant(x)).numpy()
    same = (got.view(np.int32) == want.view(np.int32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same][:5], got[~same][:5], want[~same][:5])

"""Feature extraction into TFRecord shards: bad images, resume, shard selection, CLI."""

import errno
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from bmp_files import RGBA_MASKS, bit_fields_bmp
from PIL import Image

from ofrnn_tf import processes
from ofrnn_tf.data.example import Example
from ofrnn_tf.features import cache, extract, shard_checks, shard_meta, tfrecords
from ofrnn_tf.features.backbones import get_backbone
from ofrnn_tf.features.images import decode_and_resize
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError

LABELS = LabelMap(["red", "green", "blue"])
SIZE = 64


@pytest.fixture(scope="module")
def backbone():
    """EfficientNet-Lite0 to stage 5, with its weights, at a 64-pixel input."""
    return get_backbone("efficientnet_lite0", "stage5", image_size=SIZE)


def _image(rng, mode="RGB", size=(40, 56)):
    array = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def _good_examples(directory, n=8, seed=0):
    rng = np.random.RandomState(seed)
    formats = [("jpg", "RGB"), ("png", "RGBA"), ("bmp", "RGB"), ("gif", "P"), ("png", "L")]
    examples = []
    for i in range(n):
        ext, mode = formats[i % len(formats)]
        path = os.path.join(directory, f"good{i}.{ext}")
        _image(rng, mode, size=(30 + 7 * i, 50)).save(path)
        labels = tuple(sorted({i % 3, (i + 1) % 3})) if i % 2 else (i % 3,)
        areas = None if i % 3 == 0 else tuple(0.1 * (j + 1) for j in range(len(labels)))
        examples.append(Example(f"g{i}", path, labels, areas))
    return examples


def _bad_examples(directory, rng):
    garbage = os.path.join(directory, "garbage.jpg")
    with open(garbage, "wb") as f:
        f.write(b"this is not an image")
    buf = io.BytesIO()
    _image(rng, size=(120, 90)).save(buf, "JPEG")
    truncated = os.path.join(directory, "truncated.jpg")
    with open(truncated, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 3])
    return [Example("bad_garbage", garbage, (0,)),
            Example("bad_truncated", truncated, (1,)),
            Example("bad_missing", os.path.join(directory, "missing.png"), (2,))]


@pytest.mark.slow
def test_extracts_shards_and_reports_bad_images_by_path(tmp_path, backbone, capsys):
    rng = np.random.RandomState(1)
    good = _good_examples(str(tmp_path))
    buf = io.BytesIO()
    _image(rng, size=(33, 33)).save(buf, "PNG")
    in_memory = Example("bytes0", buf.getvalue(), (0, 2), (0.25, 0.5))
    bad = _bad_examples(str(tmp_path), rng)
    # Bad images in the middle of a batch and at a shard's end.
    examples = good[:2] + [bad[0]] + good[2:5] + [bad[1], in_memory] + good[5:] + [bad[2]]
    out = str(tmp_path / "features")
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=4,
                                    num_shards=3, progress=False)

    assert summary.examples_written == len(good) + 1
    assert summary.shards_written == [0, 1, 2]
    reasons = {s["image_id"]: s for s in summary.skipped}
    assert set(reasons) == {"bad_garbage", "bad_truncated", "bad_missing"}
    assert reasons["bad_missing"]["reason"] == "file not found"
    assert reasons["bad_garbage"]["reason"] == ("not a JPEG/PNG/GIF/BMP image (starts with "
                                                "b'this is ')")
    assert reasons["bad_truncated"]["reason"].startswith(
        "its JPEG header (120x90) is sound but the data behind it is truncated or corrupt")
    err = capsys.readouterr().err
    for b in bad:
        assert b.image in err

    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".tfrecord")] == [
        shard_meta.shard_filename("train", i, 3) for i in range(3)]
    assert not [n for n in names if "incomplete" in n or ".tmp" in n]
    meta = shard_meta.read_meta(out)
    assert meta["backbone"] == "efficientnet_lite0"
    assert meta["feature_layer"] == "block5c_out"
    assert meta["image_size"] == SIZE
    assert meta["feature_shape"] == [4, 4, 112]
    assert meta["dtype"] == "float16"
    train = meta["splits"]["train"]
    assert train["complete"] and train["num_shards"] == 3
    assert train["num_examples"] == len(good) + 1
    assert {s["path"] for s in train["skipped"]} == {b.image for b in bad}
    assert LabelMap.load(out) == LABELS

    # What the reader gives back is what the backbone computes on the decoded image.
    got = {}
    for batch in tfrecords.make_dataset(out, "train", 4, label_map=LABELS):
        for j, image_id in enumerate(batch["image_id"].numpy()):
            got[image_id.decode()] = {k: v[j].numpy() for k, v in batch.items()}
    assert set(got) == {e.image_id for e in good} | {"bytes0"}
    for ex in good + [in_memory]:
        data = ex.image if isinstance(ex.image, bytes) else Path(ex.image).read_bytes()
        expected = backbone(decode_and_resize(tf.constant(data), SIZE)[None])[0].numpy()
        np.testing.assert_allclose(got[ex.image_id]["features"], expected.reshape(16, 112),
                                   rtol=2e-3, atol=2e-3)
        multi_hot = np.zeros(3, np.float32)
        multi_hot[list(ex.label_ids)] = 1
        np.testing.assert_array_equal(got[ex.image_id]["labels"], multi_hot)
        areas = np.zeros(3, np.float32)
        areas[list(ex.label_ids)] = ex.label_areas if ex.label_areas else -1
        np.testing.assert_allclose(got[ex.image_id]["label_areas"], areas, rtol=1e-6)

    # A rerun finds every shard finished and rewrites nothing.
    mtimes = {n: os.path.getmtime(os.path.join(out, n)) for n in names}
    again = extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=3,
                                  progress=False)
    assert again.shards_already_done == [0, 1, 2] and again.shards_written == []
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in names
            if n.endswith(".tfrecord")} == {n: t for n, t in mtimes.items()
                                            if n.endswith(".tfrecord")}


def test_formats_the_served_model_refuses_are_skipped_with_predicts_reasons(tmp_path, backbone):
    # decode_image reads WebP too: training on those would give a model that refuses
    # images of its own test split. The pixel limit is the server's, set at export: a
    # large photo is extracted.
    rng = np.random.RandomState(2)
    webp = tmp_path / "photo.webp"
    _image(rng).save(webp, "WEBP")
    huge = tmp_path / "huge.png"
    Image.new("1", (7000, 6000)).save(huge)  # 42 M pixels in 5 KB
    buf = io.BytesIO()
    _image(rng).save(buf, "WEBP")
    one_bit = io.BytesIO()
    Image.new("1", (32, 32)).save(one_bit, "BMP")
    refused = {"webp": (str(webp), "not a JPEG/PNG/GIF/BMP image (starts with b'RIFF"),
               "webp_bytes": (buf.getvalue(), "not a JPEG/PNG/GIF/BMP image"),
               "one_bit_bmp": (one_bit.getvalue(), "a BMP of bit depth 1, a layout the model "
                                                   "does not read"),
               # TensorFlow decodes it, with its colours swapped.
               "swapped_bmp": (bit_fields_bmp(_image(rng), RGBA_MASKS),
                               "a BMP of bit depth 32 whose colour masks are not blue, green, "
                               "red")}
    good = _good_examples(str(tmp_path), n=3) + [Example("huge", str(huge), (0,))]
    examples = good[:1] + [Example(k, image, (0,)) for k, (image, _) in refused.items()] + good[1:]
    out = str(tmp_path / "features")
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                                    num_shards=2, progress=False)
    assert summary.examples_written == len(good)
    reasons = {s["image_id"]: s["reason"] for s in summary.skipped}
    assert set(reasons) == set(refused)
    for key, (_, reason) in refused.items():
        assert reasons[key].startswith(reason), reasons[key]
    assert reasons["webp"].endswith("(this looks like WebP, which is not accepted)")
    assert cache.repaired_images(out, "train") == {}  # a cache hit calls none repaired
    assert cache.held_unservable(out, "train", examples) == []
    # A copy of the data elsewhere reuses the cache: its skipped images are not named
    # as held (the shards say they were checked).
    moved = [Example(e.image_id, e.image.replace(str(tmp_path), str(tmp_path / "copy"))
                     if isinstance(e.image, str) else e.image, e.label_ids) for e in examples]
    for before, after in zip(examples, moved):
        if isinstance(before.image, str):
            os.makedirs(os.path.dirname(after.image), exist_ok=True)
            shutil.copy(before.image, after.image)
    assert cache.held_unservable(out, "train", moved) == []


@pytest.mark.parametrize("checks", [0, 1])
def test_a_cache_built_before_the_format_checks_names_the_refused_images_it_holds(
        tmp_path, backbone, monkeypatch, capsys, checks):
    rng = np.random.RandomState(3)
    webp = tmp_path / "photo.jpg"  # WebP bytes under a JPEG name, as scraped data has
    _image(rng).save(webp, "WEBP")
    swapped = tmp_path / "swapped.bmp"
    swapped.write_bytes(bit_fields_bmp(_image(rng), RGBA_MASKS))
    good = _good_examples(str(tmp_path), n=3)
    examples = good[:1] + [Example("webp", str(webp), (0,)),
                           Example("swapped", str(swapped), (1,))] + good[1:]
    # The extraction of earlier versions: no check of BMP layouts, and (`checks` 0) none
    # of the magic bytes either, with shard records that say so as they did.
    monkeypatch.setattr(extract, "has_accepted_bmp_layout", lambda data: tf.constant(True))
    if checks == 0:
        monkeypatch.setattr(extract, "has_accepted_format", lambda data: tf.constant(True))
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: backbone)
    directory = str(tmp_path / "features")
    splits = {"train": examples}
    cache.ensure_features(splits, LABELS, directory, "efficientnet_lite0", "stage5",
                          "f" * 64, batch_size=2, num_shards=2)
    for record in glob.glob(os.path.join(directory, "train-*.json")):
        stats = json.load(open(record))
        if checks == 0:
            del stats["format_checked"]
        else:
            stats["format_checked"] = True
        json.dump(stats, open(record, "w"))
    held = cache.held_unservable(directory, "train", examples)
    named = [f"{webp}: not a JPEG, PNG, GIF or BMP image"] if checks == 0 else []
    assert held[:-1] == named and held[-1].startswith(
        f"{swapped}: a BMP of bit depth 32 whose colour masks are not blue, green, red"), held
    capsys.readouterr()
    cache.ensure_features(splits, LABELS, directory, "efficientnet_lite0", "stage5",
                          "f" * 64, batch_size=2, num_shards=2)
    note = capsys.readouterr().err
    assert f"{len(held)} image(s) in this cache are refused by the exported model" in note
    assert str(swapped) in note and f"Delete {directory}" in note


def test_the_image_pipeline_runs_without_the_autotuner(tmp_path):
    # Ending an iterator waits for the autotuner's thread, which held long extractions
    # idle for up to a minute after their last image; the pipeline must not start it.
    examples = _good_examples(str(tmp_path), n=3)
    dataset = extract._image_dataset(examples, range(3), SIZE, batch_size=2)
    assert dataset.options().autotune.enabled is False
    positions = np.concatenate([p.numpy() for p, _ in dataset])
    assert positions.tolist() == [0, 1, 2]


def test_the_image_pipeline_and_a_shard_count_write_no_autograph_sources(tmp_path,
                                                                        monkeypatch):
    # AutoGraph writes each function it converts to the temporary folder and removes the
    # file at exit only: an extraction killed (out of memory) left them there for good.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    examples = _good_examples(str(tmp_path), n=3)
    assert len(list(extract._image_dataset(examples, range(3), SIZE, batch_size=2))) == 2
    shard = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(shard) as writer:
        for record in (b"a", b"b"):
            writer.write(record)
    assert shard_checks.check_shard(shard, full=True) == 2
    assert list(temp.iterdir()) == []


def test_images_are_decoded_on_threads_that_grow_with_the_usable_cores(tmp_path, monkeypatch):
    # A 12-megapixel JPEG takes 129 ms to decode, four times a backbone's 33 ms: two fixed
    # threads capped extraction on any machine. The count must not change the images.
    examples = _good_examples(str(tmp_path), n=5)
    calls, map_ = [], tf.data.Dataset.map

    def counted(dataset, fn, num_parallel_calls=None, **kwargs):
        calls.append(num_parallel_calls)
        return map_(dataset, fn, num_parallel_calls=num_parallel_calls, **kwargs)

    monkeypatch.setattr(tf.data.Dataset, "map", counted)
    images = []
    for usable in (1, 8, 64):
        monkeypatch.setattr(extract, "usable_cpus", lambda: usable)
        dataset = extract._image_dataset(examples, range(5), SIZE, batch_size=2)
        images.append(np.concatenate([batch.numpy() for _, batch in dataset]))
    assert calls == [2, 2, 16]
    for other in images[1:]:
        np.testing.assert_array_equal(other, images[0])


def test_an_interrupted_extraction_resumes(tmp_path, backbone, monkeypatch):
    examples = _good_examples(str(tmp_path), n=8)
    out = str(tmp_path / "features")
    real = tfrecords.serialize_example
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(tfrecords, "serialize_example", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                              num_shards=4, progress=False)
    monkeypatch.setattr(tfrecords, "serialize_example", real)
    finished = [n for n in os.listdir(out) if n.endswith(".tfrecord")]
    assert finished == [shard_meta.shard_filename("train", 0, 4)]
    # The shard it failed in is never resumed from: it does not stay (on a full disk, say).
    assert not [n for n in os.listdir(out) if "incomplete" in n]
    assert not shard_meta.read_meta(out)["splits"]["train"]["complete"]

    summary = extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                                    num_shards=4, progress=False)
    assert summary.shards_already_done == [0] and summary.shards_written == [1, 2, 3]
    ids = [i.decode() for b in tfrecords.make_dataset(out, "train", 8) for i in
           b["image_id"].numpy()]
    assert sorted(ids) == sorted(e.image_id for e in examples)
    assert not [n for n in os.listdir(out) if "incomplete" in n]


def test_a_full_disk_at_a_shards_stats_leaves_no_temporary_shard(tmp_path, backbone,
                                                                 monkeypatch):
    # The shard's records are all written when its stats fail: without them it is no
    # finished shard, and its temporary file would hold a shard's worth of the full disk.
    examples = _good_examples(str(tmp_path), n=8)
    out = str(tmp_path / "features")

    def no_space(features_dir, split, index, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_meta, "write_shard_stats", no_space)
    with pytest.raises(OSError, match="No space left"):
        extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                              num_shards=4, progress=False)
    assert [n for n in os.listdir(out) if "incomplete" in n] == []


def test_an_image_whose_features_float16_cannot_hold_is_refused_naming_it(tmp_path,
                                                                          tiny_backbone):
    from ofrnn_tf.data import DataFileError
    from ofrnn_tf.features.backbones import Backbone

    # Inputs scaled up: maps far beyond float16's ±65504, which the cache would store as inf.
    overflowing = Backbone(tiny_backbone.name, "maps", tiny_backbone.feature_model,
                           lambda images: tf.cast(images, tf.float32) * 1e4,
                           tiny_backbone.image_size)
    out = str(tmp_path / "features")
    with pytest.raises(DataFileError, match="^image g0: its feature maps hold a value beyond "
                                            "float16's ±65504, which the float16 feature "
                                            "cache cannot store"):
        extract.extract_split(_good_examples(str(tmp_path), n=3), LABELS, overflowing, out,
                              "train", batch_size=2, num_shards=1, progress=False)
    assert glob.glob(os.path.join(out, "*.tfrecord*")) == []  # no record of it is kept


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("start_readable", [True, False])
def test_owner_tags_name_host_and_pid_and_only_this_hosts_dead_owners_are_dead(
        monkeypatch, start_readable):
    if not start_readable:  # macOS: no /proc to read a process's start time from
        monkeypatch.setattr(processes, "_started", lambda pid: None)
    elif processes._started(os.getpid()) is None:
        pytest.skip("reads processes' start times from /proc (Linux)")
    tag = processes.owner_tag()
    host, _, rest = tag.rpartition("-")
    pid, _, start = rest.partition("@")
    assert pid == str(os.getpid()) and host and "-" not in host
    assert start.isdigit() if start_readable else tag == f"{host}-{pid}"
    assert processes.describe_owner(tag) == f"pid {pid} on host {host}"
    dead = _dead_pid()
    assert processes.left_by_dead_owner(f"{host}-{dead}")
    assert processes.left_by_dead_owner(f"{host}-{dead}@{start or 1234}")
    assert processes.left_by_dead_owner(str(dead))  # names from before the host was in them
    assert not processes.left_by_dead_owner(f"{host}-{os.getppid()}")
    assert not processes.left_by_dead_owner(tag)
    if start_readable:
        # The same pid started at another time (a container's PID 1 after a restart): the
        # tag's process is dead, whatever runs under its pid now.
        assert processes.left_by_dead_owner(f"{host}-{pid}@{int(start) - 1}")
        assert processes.left_by_dead_owner(f"{host}-{os.getppid()}@{int(start) + 1}")
    # Another machine's pids cannot be asked from here: its file may be in progress.
    assert not processes.left_by_dead_owner(f"other.machine-{dead}")
    assert not processes.left_by_dead_owner("no tag")


def test_other_hosts_temporary_entries_are_named_each_once(tmp_path, capsys):
    # One folder, two kinds of temporary file: a later kind's leftover is named too.
    leftovers = ["a.json.tmp-other.machine-7@5", "b.json.tmp-other.machine-8@5"]
    for name in leftovers:
        (tmp_path / name).write_text("partial")
    for stem in ("a", "b", "a", "b"):
        processes.remove_dead_leftovers(str(tmp_path), re.compile(
            re.escape(f"{stem}.json") + r"\.tmp-(?P<owner>.+)"))
    said = capsys.readouterr().err
    assert [said.count(name) for name in leftovers] == [1, 1], said
    assert sorted(os.listdir(tmp_path)) == leftovers


def test_a_dead_leftover_this_user_cannot_remove_is_named_once(tmp_path, capsys,
                                                                monkeypatch):
    # Another user's leftover in a shared folder, whose files this user may not remove:
    # named (it takes its disk space for ever), once, not passed over in silence.
    leftover = tmp_path / f"a.json.tmp-{processes.owner_tag().rpartition('-')[0]}-{_dead_pid()}"
    (leftover / "inner").mkdir(parents=True)
    (leftover / "inner" / "part").write_text("partial")

    def rmtree_refused(path, onerror=None, onexc=None):
        # shutil.rmtree's own callbacks: `onexc` from Python 3.12 on, `onerror` before
        inner = os.path.join(path, "inner", "part")
        error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), inner)
        if onexc is not None:
            onexc(os.unlink, inner, error)
        else:
            onerror(os.unlink, inner, (PermissionError, error, None))

    monkeypatch.setattr(processes.shutil, "rmtree", rmtree_refused)
    for _ in range(2):
        processes.remove_dead_leftovers(str(tmp_path), re.compile(
            re.escape("a.json") + r"\.tmp-(?P<owner>.+)"))
    said = capsys.readouterr().err
    assert said == (f"[ofrnn_tf] {leftover}, a dead command's temporary entry, cannot be "
                    f"removed (Permission denied: {leftover}/inner/part): left as it is, "
                    f"taking its disk space until its owner removes it\n")
    assert leftover.is_dir()


def test_temporary_shards_of_other_live_processes_are_left_alone(tmp_path, backbone, capsys):
    # Two runs that start together (or machines sharing the folder) build the same cache:
    # each writes under its own temporary name, and only leftovers of dead processes of
    # this machine are cleared.
    examples = _good_examples(str(tmp_path), n=4)
    out = tmp_path / "features"
    out.mkdir()
    final = str(out / shard_meta.shard_filename("train", 0, 1))
    host, dead = processes.owner_tag().rpartition("-")[0], _dead_pid()
    kept = [f"{final}.incomplete-{host}-{os.getppid()}",
            f"{final}.incomplete-other.machine-{dead}"]
    cleared = [f"{final}.incomplete-{host}-{dead}", f"{final}.incomplete-{dead}",
               f"{final}.incomplete"]
    for path in kept + cleared:
        with open(path, "w") as f:
            f.write("partial")
    extract.extract_split(examples, LABELS, backbone, str(out), "train", num_shards=1,
                          progress=False)
    assert [os.path.exists(path) for path in kept + cleared] == [True, True] + [False] * 3
    assert shard_meta.num_examples(str(out), "train") == 4
    # Another host's leftover is named, once: where that host is gone, nothing removes it.
    said = capsys.readouterr().err
    assert said.count("temporary entries of other hosts are left as they are") == 1, said
    assert f"({os.path.basename(kept[1])}): a command there may be writing them" in said


def test_a_link_planted_at_a_temporary_shard_name_is_not_written_through(tmp_path, backbone):
    # The name is this process's (host, pid, start), which others can read: whatever
    # is there is removed and the file made new, so the link's target stays as it was.
    examples = _good_examples(str(tmp_path), n=3)
    out = tmp_path / "features"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    final = str(out / shard_meta.shard_filename("train", 0, 1))
    os.symlink(victim, f"{final}.incomplete-{processes.owner_tag()}")
    extract.extract_split(examples, LABELS, backbone, str(out), "train", num_shards=1,
                          progress=False)
    assert victim.read_text() == "kept"
    assert not os.path.islink(final) and shard_meta.num_examples(str(out), "train") == 3


@pytest.mark.parametrize("mode,refused", [(0o777, True), (0o1777, False), (0o775, False)])
def test_a_feature_folder_every_user_may_write_in_is_refused_unless_sticky(
        tmp_path, backbone, mode, refused):
    examples = _good_examples(str(tmp_path), n=3)
    out = tmp_path / "features"
    out.mkdir()
    os.chmod(out, mode)
    extracting = lambda: extract.extract_split(examples, LABELS, backbone, str(out), "train",
                                               num_shards=1, progress=False)
    if not refused:
        extracting()
        assert shard_meta.num_examples(str(out), "train") == 3
        return
    with pytest.raises(extract.UnsafeFeatureFolderError,
                       match=rf"{re.escape(str(out))} may be written by every user \(mode 777\) "
                             rf"and has no sticky bit: .* \(chmod o-w "):
        extracting()
    assert os.listdir(out) == []


def test_a_link_at_the_cache_lock_is_refused_not_followed(tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    target = tmp_path / "elsewhere"
    os.symlink(target, out / "meta.json.lock")
    with pytest.raises(shard_meta.FeatureCacheDamagedError,
                       match=r"meta.json.lock is a symbolic link, which this lock is never "
                             r"taken through: remove it"):
        shard_meta.write_meta(str(out), {"backbone": "x"})
    assert not target.exists()


def test_a_dead_processs_temporary_shard_of_a_split_finished_since_is_removed(tmp_path,
                                                                              backbone):
    # Killed while another process extracted the same split: nothing extracts that shard
    # again, so the cached split's reuse clears it.
    examples = _good_examples(str(tmp_path), n=4)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=2,
                          progress=False)
    final = os.path.join(out, shard_meta.shard_filename("train", 1, 2))
    host, dead = processes.owner_tag().rpartition("-")[0], _dead_pid()
    live, gone = f"{final}.incomplete-{host}-{os.getppid()}", f"{final}.incomplete-{host}-{dead}"
    for path in (live, gone):
        open(path, "w").close()
    cache.ensure_features({"train": examples}, LABELS, out, "unused", "unused", "f" * 64)
    assert os.path.exists(live) and not os.path.exists(gone)


@pytest.mark.parametrize("ours_removed", [False, True], ids=["ours-left", "ours-removed"])
def test_a_shard_another_process_finished_first_is_kept(tmp_path, backbone, monkeypatch,
                                                        ours_removed):
    # Another machine finishes the same shard while this process writes it (and, if it
    # runs an older version, removes this process's temporary file): the shard in place
    # stays and this extraction ends without an error.
    examples = _good_examples(str(tmp_path), n=3)
    out = str(tmp_path / "features")
    final = os.path.join(out, shard_meta.shard_filename("train", 0, 1))
    write_shard_stats = shard_meta.write_shard_stats

    def another_process_finishes_first(*args, **kwargs):
        write_shard_stats(*args, **kwargs)
        with open(final, "wb") as f:
            f.write(b"theirs")
        if ours_removed:
            for path in glob.glob(glob.escape(final) + ".incomplete-*"):
                os.remove(path)

    monkeypatch.setattr(shard_meta, "write_shard_stats", another_process_finishes_first)
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=1,
                                    progress=False)
    assert summary.shards_written == [0]
    assert Path(final).read_bytes() == b"theirs"
    assert not [n for n in os.listdir(out) if "incomplete" in n]


def test_shard_index_lets_several_machines_share_a_split(tmp_path, backbone):
    examples = _good_examples(str(tmp_path), n=7)
    out = str(tmp_path / "features")
    s1 = extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=3,
                               shard_index=1, progress=False)
    assert s1.shards_written == [1] and s1.examples_written == 2  # examples 2..3
    with pytest.raises(ValueError, match="val-00000-of-00003"):
        tfrecords.make_dataset(out, "val", 4)
    for i in (2, 0):
        extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=3,
                              shard_index=i, progress=False)
    assert shard_meta.num_examples(out, "val") == 7
    assert shard_meta.read_meta(out)["splits"]["val"]["complete"]


def test_a_split_begun_in_other_shards_names_the_flag_that_resumes_it(tmp_path, backbone):
    examples = _good_examples(str(tmp_path), n=4)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=3, shard_index=0,
                          progress=False)
    with pytest.raises(extract.FeatureFolderMismatchError,
                       match=r"in 3 shards \(val-00000-of-00003.*\): resume it with "
                             r"--features.num_shards=3"):
        extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=2,
                              progress=False)


def test_a_split_begun_at_once_in_two_shard_counts_resumes_in_either(tmp_path, backbone):
    # Two workers sharing a cache started together with other --features.num_shards: each
    # layout may be finished (the complete one is read), a third count names both.
    examples = _good_examples(str(tmp_path), n=4)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=2, shard_index=0,
                          progress=False)
    # The second worker's shard, as if it had passed its check before the first wrote.
    extract.extract_split(examples, LABELS, backbone, str(tmp_path / "other"), "val",
                          num_shards=4, shard_index=1, progress=False)
    for name in os.listdir(tmp_path / "other"):
        if name.startswith("val-"):
            shutil.copy(tmp_path / "other" / name, os.path.join(out, name))
    with pytest.raises(extract.FeatureFolderMismatchError,
                       match=r"in 2 shards \(val-00000-of-00002.json\) and 4 shards "
                             r"\(val-00001-of-00004.json\): resume it with "
                             r"--features.num_shards=4"):
        extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=3,
                              progress=False)
    extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=4, progress=False)
    assert shard_meta.read_meta(out)["splits"]["val"]["num_shards"] == 4
    assert shard_meta.num_examples(out, "val") == 4


def test_more_shards_than_images_gives_empty_shards(tmp_path, backbone):
    examples = _good_examples(str(tmp_path), n=2)
    out = str(tmp_path / "features")
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=4,
                                    progress=False)
    assert summary.shards_written == [0, 1, 2, 3] and summary.examples_written == 2
    assert "2 examples written in 4 shard(s)" in str(summary)
    ids = [i for b in tfrecords.make_dataset(out, "train", 4) for i in b["image_id"].numpy()]
    assert sorted(ids) == [b"g0", b"g1"]


def test_mismatches_are_refused(tmp_path, backbone):
    examples = _good_examples(str(tmp_path), n=3)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=1,
                          progress=False)
    with pytest.raises(LabelMapMismatchError):
        extract.extract_split(examples, LabelMap(["red", "green", "cyan"]), backbone, out,
                              "test", num_shards=1, progress=False)
    with pytest.raises(ValueError, match="in 1 shards.*num_shards=1"):
        extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=2,
                              progress=False)
    with pytest.raises(ValueError, match="had 3 images.*now 2"):
        extract.extract_split(examples[:2], LABELS, backbone, out, "train", num_shards=1,
                              progress=False)
    other = get_backbone("efficientnet_lite0", "stage6", image_size=SIZE, weights=None)
    with pytest.raises(ValueError, match="another backbone.*feature_layer"):
        extract.extract_split(examples, LABELS, other, out, "test", num_shards=1,
                              progress=False)
    with pytest.raises(ValueError, match=r"label ids \[5\]"):
        extract.extract_split([Example("x", examples[0].image, (5,))], LABELS, backbone, out,
                              "test", num_shards=1, progress=False)
    with pytest.raises(ValueError, match="shard_index"):
        extract.extract_split(examples, LABELS, backbone, out, "test", num_shards=2,
                              shard_index=2, progress=False)


def test_a_shard_without_a_readable_stats_file_is_extracted_again(tmp_path, backbone,
                                                                  capsys):
    examples = _good_examples(str(tmp_path), n=6)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=3,
                          progress=False)
    stats = [os.path.join(out, shard_meta.shard_stats_filename("train", i, 3)) for i in range(3)]
    os.remove(stats[1])  # lost, or deleted after the reader called it unreadable
    open(stats[2], "w").close()  # a crash before its bytes reached the disk
    with pytest.raises(ValueError) as error:
        tfrecords.make_dataset(out, "train", 2)
    assert f"{stats[1]} is missing" in str(error.value)
    assert f"{stats[2]}: not valid JSON" in str(error.value)
    assert "rerun the extraction" in str(error.value)

    capsys.readouterr()
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=3,
                                    progress=False)
    assert summary.shards_already_done == [0] and summary.shards_written == [1, 2]
    err = capsys.readouterr().err
    assert f"{stats[1]} is missing; extracting that shard again" in err
    assert f"{stats[2]}: not valid JSON" in err
    assert shard_meta.num_examples(out, "train") == 6
    ids = [i for b in tfrecords.make_dataset(out, "train", 6) for i in b["image_id"].numpy()]
    assert len(ids) == 6


def test_a_corrupt_meta_json_is_named_with_its_remedy(tmp_path, backbone):
    examples = _good_examples(str(tmp_path), n=2)
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=1,
                          progress=False)
    meta = os.path.join(out, shard_meta.META_FILENAME)
    with open(meta, "w") as f:
        f.write('{"backbone": "efficientnet_lite0", "feat')
    with pytest.raises(ValueError, match=f"^{meta}: not valid JSON .*delete it and rerun"):
        extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=1,
                              progress=False)
    os.remove(meta)
    extract.extract_split(examples, LABELS, backbone, out, "val", num_shards=1, progress=False)
    assert [shard_meta.num_examples(out, s) for s in ("train", "val")] == [2, 2]


def test_a_repaired_image_is_named_on_a_cache_hit(tmp_path, backbone, monkeypatch, capsys):
    # The fingerprint covers ids and labels, not bytes: a repaired image keeps its cache
    # entry, so the cache hit says which images decode now and which shard to delete.
    examples = _good_examples(str(tmp_path), n=4)
    repaired = examples[2].image
    data = Path(repaired).read_bytes()
    with open(repaired, "wb") as f:
        f.write(data[:len(data) // 3])
    out = str(tmp_path / "features")
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: backbone)

    def ensure():
        meta = cache.ensure_features({"train": examples}, LABELS, out, "efficientnet_lite0",
                                     "stage5", "f" * 64, num_shards=2)
        return meta["splits"]["train"]

    assert [s["path"] for s in ensure()["skipped"]] == [repaired]
    shard = os.path.join(out, shard_meta.shard_filename("train", 1, 2))
    assert f"{repaired}: " in capsys.readouterr().err
    ensure()
    assert "decode now" not in capsys.readouterr().err  # still broken: nothing to say
    with open(repaired, "wb") as f:
        f.write(data)
    ensure()
    err = capsys.readouterr().err
    assert f"decode now ({repaired})" in err and f"delete {shard} (or the folder {out})" in err
    os.remove(shard)
    train = ensure()
    assert train["skipped"] == [] and train["num_examples"] == 4


def test_a_complete_cache_is_read_without_writing_to_it(tmp_path, backbone, monkeypatch):
    # A cache shared read-only (a mounted copy, another user's folder) must serve as is.
    examples = _good_examples(str(tmp_path), n=4)
    out = str(tmp_path / "features")
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: backbone)
    inputs = cache.describe_inputs({"train": examples, "val": examples[:2]}, LABELS)

    def ensure():
        return cache.ensure_features({"train": examples, "val": examples[:2]}, LABELS, out,
                                     "efficientnet_lite0", "stage5", "f" * 64,
                                     num_shards=2, inputs=inputs)

    built = ensure()

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(shard_meta, "write_json", read_only)
    assert ensure() == built
    assert built[cache.INPUTS_KEY] == inputs and built["splits"]["train"]["num_examples"] == 4


def test_a_failed_extraction_reports_its_own_error_not_the_meta_json_write(tmp_path, backbone,
                                                                         monkeypatch, capsys):
    # On a full disk the shard's error names the file; meta.json's write fails too after it.
    examples = _good_examples(str(tmp_path), n=4)
    out = str(tmp_path / "features")
    real_serialize, real_write = tfrecords.serialize_example, shard_meta.write_json
    full = []

    def disk_fills(*args, **kwargs):  # in the second shard, once the first is finished
        full.append(1)
        if len(full) < 3:
            return real_serialize(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", "train-00001.tfrecord")

    def write_json(path, *args, **kwargs):
        if len(full) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(tfrecords, "serialize_example", disk_fills)
    monkeypatch.setattr(shard_meta, "write_json", write_json)
    with pytest.raises(OSError, match="train-00001.tfrecord"):
        extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                              num_shards=2, progress=False)
    assert f"could not update {os.path.join(out, 'meta.json')}" in capsys.readouterr().err
    monkeypatch.setattr(tfrecords, "serialize_example", real_serialize)
    monkeypatch.setattr(shard_meta, "write_json", real_write)
    full.clear()
    summary = extract.extract_split(examples, LABELS, backbone, out, "train", batch_size=2,
                                    num_shards=2, progress=False)
    assert summary.shards_already_done == [0] and summary.shards_written == [1]


def test_the_skip_message_says_how_to_extract_the_image_once_it_is_fixed(tmp_path, backbone,
                                                                          capsys):
    rng = np.random.RandomState(0)
    examples = _good_examples(str(tmp_path), n=2) + _bad_examples(str(tmp_path), rng)[:1]
    out = str(tmp_path / "features")
    extract.extract_split(examples, LABELS, backbone, out, "train", num_shards=1,
                          progress=False)
    shard = os.path.join(out, shard_meta.shard_filename("train", 0, 1))
    assert (f"once it is fixed, delete {shard}, or its whole folder, and rerun to extract it"
            in capsys.readouterr().err)


@pytest.mark.parametrize("flags, message", [
    (["--config=manifest", "--features.num_shards=1", "--shard_index=3"],
     "--shard_index=3 is not a shard of --features.num_shards=1: give 0 to 0"),
    (["--config=manifest", "--shard_index=-1"], "--shard_index=-1 is not a shard of "
                                                "--features.num_shards=8: give 0 to 7"),
    (["--data.manifest=all.csv"], "--data.manifest=all.csv is read only with "
                                  "--data.dataset=manifest"),
], ids=["beyond", "negative", "manifest-without-its-config"])
def test_command_line_refuses_settings_it_cannot_use_before_any_data_work(tmp_path, flags,
                                                                         message):
    missing = tmp_path / "no_such_data"  # never read: the flags are refused first
    done = subprocess.run(
        [sys.executable, "-m", "ofrnn_tf.cli.extract", f"--data.data_dir={missing}",
         f"--runtime.cache_dir={tmp_path / 'cache'}", *flags],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_command_line_builds_the_cache_training_reads(tmp_path):
    examples = _good_examples(str(tmp_path), n=5)
    for split, chosen in (("train", examples[:3]), ("val", examples[3:4]), ("test", examples[4:])):
        with open(tmp_path / f"{split}.csv", "w") as f:
            f.write("path,labels\n")
            for e in chosen:
                f.write(f"{os.path.basename(e.image)},{';'.join(LABELS.names_of(e.label_ids))}\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "ofrnn_tf.cli.extract", "--config=manifest",
               f"--data.data_dir={tmp_path}", f"--runtime.cache_dir={tmp_path / 'cache'}",
               "--features.layer=top", "--features.num_shards=2",
               "--features.extract_batch_size=2", "--train.batch_size=2"]
    first = subprocess.run(command + ["--shard_index=1"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[ofrnn_tf] features train: 2 examples written in 1 shard(s)" in first.stderr
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip().splitlines()[-1]
    assert out == first.stdout.strip().splitlines()[-1]
    assert os.path.dirname(out) == str(tmp_path / "cache" / "features")
    assert os.path.basename(out).startswith("manifest-efficientnet_lite0-top-")
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["feature_shape"] == [7, 7, 1280] and len(meta["content_fingerprint"]) == 64
    assert [shard_meta.num_examples(out, s) for s in ("train", "val", "test")] == [3, 1, 1]


def test_a_layer_spelt_by_its_keras_name_finds_the_cache_of_its_short_name(tmp_path):
    # stage5 is block5c_out: the same features, found where they are, not extracted twice.
    inputs = {"format": 2, "labels": ["a"],
              "splits": {"train": {"ids_labels": "x", "files": "y"}}}
    fingerprint = cache.fingerprint_of(inputs, "efficientnet_lite0", "stage5")
    assert cache.fingerprint_of(inputs, "efficientnet_lite0", "block5c_out") == fingerprint
    assert cache.fingerprint_of(inputs, "efficientnet_lite0", "stage6") != fingerprint
    cache_dir = str(tmp_path / "cache[1]")  # a glob character in the path is no pattern

    def in_use(layer: str) -> str:
        return cache.cache_name_in_use(cache_dir, "manifest", "efficientnet_lite0", layer,
                                       fingerprint)

    short, keras_name = (cache.cache_name("manifest", "efficientnet_lite0", layer, fingerprint)
                         for layer in ("stage5", "block5c_out"))
    assert in_use("block5c_out") == keras_name  # no cache yet: its own name
    directory = Path(cache.features_dir(cache_dir, short))
    directory.mkdir(parents=True)
    (directory / shard_meta.META_FILENAME).write_text(
        json.dumps({cache.FINGERPRINT_KEY: "0" * 64, "splits": {}}))
    assert in_use("block5c_out") == keras_name  # the same name's start, other features
    (directory / shard_meta.META_FILENAME).write_text(
        json.dumps({cache.FINGERPRINT_KEY: fingerprint, "splits": {}}))
    assert in_use("block5c_out") == short and in_use("stage5") == short

"""The embedded Fashion-MNIST canvas benchmark, built from a tiny fake IDX set."""

import errno
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_checked
from ofrnn_tf.data import DataNotFoundError
from ofrnn_tf.data import canvas_painting as painting, canvas_store as store
from ofrnn_tf.data import fashion_canvases as fc, fashion_mnist as fm
from ofrnn_tf.data.canvas_config import OUTFIT_SCENES, SCENE_TABLES, SPLITS, CanvasConfig
from ofrnn_tf.data.registry import load_split
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError
from ofrnn_tf.processes import owner_tag, remove_dead_leftovers

SMALL = (8, 12)
CONFIG = dict(num_train=14, num_val=5, num_test=7, canvas_size=64, min_items=1,
              max_items=4, item_size_range=(16, 28), small_item_share=0.4,
              small_item_size_range=SMALL, val_source_fraction=0.2, seed=3)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, n_train=50, n_test=20):
    """Random bright rectangles on black, labels cycling through the 10 classes."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for img in images:
            y0, x0 = rng.integers(0, 10, size=2)
            y1, x1 = rng.integers(18, 28, size=2)
            img[y0:y1, x0:x1] = rng.integers(120, 256, size=(y1 - y0, x1 - x0))
        labels = np.arange(n) % 10
        _write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), labels)
        data[split] = (images, labels)
    return str(directory), data


@pytest.fixture()
def source(tmp_path):
    """`(folder, arrays)`: Fashion-MNIST's four files, faked with 50 + 20 rectangles."""
    return _fake_fashion_mnist(tmp_path / "fmnist")


def _build(out_dir, source_dir, **overrides):
    return fc.build_fashion_canvases(str(out_dir), CanvasConfig(**{**CONFIG, **overrides}),
                                     source_dir=source_dir, allow_download=False,
                                     progress=False)


def _coco(out_dir, split):
    with open(os.path.join(out_dir, f"{split}.json")) as f:
        return json.load(f)


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(fm.read_idx(str(tmp_path / "x.gz")), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad magic"):
        fm.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x00")
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        fm.read_idx(str(tmp_path / "short"))
    whole = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(whole[:len(whole) // 2])  # a download cut short
    with pytest.raises(OSError, match=f"cannot read IDX file {tmp_path / 'cut.gz'}: .*replace"):
        fm.read_idx(str(tmp_path / "cut.gz"))


def test_layout_labels_and_loading_through_coco(tmp_path, source):
    source_dir, data = source
    result = _build(tmp_path / "bench", source_dir)
    out = result["out_dir"]
    assert not result["cached"]
    assert {s: result["splits"][s]["images"] for s in SPLITS} == {
        "train": 14, "val": 5, "test": 7}
    assert LabelMap.load(out).names == fm.FASHION_MNIST_CLASSES

    sizes = []
    for split in SPLITS:
        coco = _coco(out, split)
        assert [c["name"] for c in coco["categories"]] == list(fm.FASHION_MNIST_CLASSES)
        src_images, src_labels = data["t10k" if split == "test" else "train"]
        examples, label_map, stats = load_split("fashion_canvases", split, data_dir=out)
        assert stats.images == len(coco["images"]) and stats.dropped_unlabeled == 0
        by_image = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
            # The class is the source image's Fashion-MNIST label.
            assert ann["category_id"] - 1 == src_labels[ann["source_index"]]
            sizes.append(ann["item_size"])
        for ex in examples:
            anns = by_image[int(ex.image_id)]
            assert 1 <= len(anns) <= 4
            assert ex.label_ids == tuple(sorted({a["category_id"] - 1 for a in anns}))
            assert all(0 < a <= 1 for a in ex.label_areas)
            with Image.open(ex.image) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
            boxes = [a["bbox"] for a in anns]
            for i, (x, y, w, h) in enumerate(boxes):
                assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and w * h > 0
                for (x2, y2, w2, h2) in boxes[i + 1:]:
                    assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
    sizes = np.array(sizes)
    assert ((sizes >= SMALL[0]) & (sizes <= SMALL[1])).any(), "no small items"
    assert (sizes >= 16).any(), "no ordinary items"


def test_sources_are_disjoint_between_splits(tmp_path, source):
    source_dir, _ = source
    out = _build(tmp_path / "bench", source_dir)["out_dir"]
    used = {s: {(a["source_split"], a["source_index"]) for a in _coco(out, s)["annotations"]}
            for s in SPLITS}
    assert {sp for sp, _ in used["train"] | used["val"]} == {"train"}
    assert {sp for sp, _ in used["test"]} == {"test"}
    assert all(i < 20 for _, i in used["test"])
    assert used["train"] and used["val"] and not used["train"] & used["val"]


def test_deterministic_for_a_seed(tmp_path, source):
    source_dir, _ = source
    a = _build(tmp_path / "a", source_dir)["out_dir"]
    b = _build(tmp_path / "b", source_dir)["out_dir"]
    c = _build(tmp_path / "c", source_dir, seed=4)["out_dir"]
    for split in SPLITS:
        assert _coco(a, split) == _coco(b, split)
        for name in os.listdir(os.path.join(a, "images", split)):
            with open(os.path.join(a, "images", split, name), "rb") as fa, \
                    open(os.path.join(b, "images", split, name), "rb") as fb:
                assert fa.read() == fb.read()
    assert _coco(a, "train")["annotations"] != _coco(c, "train")["annotations"]


def test_canvases_are_painted_by_one_thread_per_usable_core_into_the_same_files(
        tmp_path, source, monkeypatch):
    # os.cpu_count() counts the host's cores, not those a container may use: a thread each
    # on one usable core of 64 doubled the memory and slowed the build.
    source_dir, _ = source
    pools, executor = [], painting.ThreadPoolExecutor

    def counted(max_workers):
        pools.append(max_workers)
        return executor(max_workers=max_workers)

    monkeypatch.setattr(painting, "ThreadPoolExecutor", counted)
    monkeypatch.setattr(painting, "usable_cpus", lambda: 1)
    one = _build(tmp_path / "one", source_dir)["out_dir"]
    monkeypatch.setattr(painting, "usable_cpus", lambda: 5)
    five = _build(tmp_path / "five", source_dir)["out_dir"]
    assert pools == [1] * len(SPLITS) + [5] * len(SPLITS)
    assert _split_hashes(one) == _split_hashes(five)


def _background_in_float64(canvas_size, rng):
    """The background as a plain float64 sum, clipped, then cast to float32."""
    level = rng.uniform(0, 255)
    base = np.clip(level + rng.uniform(-40, 40, size=3), 0, 255)
    coarse = np.clip(128 + rng.normal(0, 22, size=(8, 8, 3)), 0, 255).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize(
        (canvas_size, canvas_size), Image.Resampling.BILINEAR), np.float32) - 128.0
    canvas = base.astype(np.float32) + blotches + rng.normal(0, 4, size=(canvas_size,
                                                                         canvas_size, 1))
    return level, np.clip(canvas, 0, 255).astype(np.float32)


def test_the_background_is_the_float64_sum_rounded_to_float32_bit_for_bit():
    # Computed in place in float32 storage, it must still be the float64 sum (the canvases,
    # and with them every feature cache, stay the same files); clipping at both ends is
    # exercised by the dark and bright levels among the seeds.
    clipped = set()
    for seed in range(40):
        level, canvas = painting._background(48, np.random.default_rng(seed))
        expected_level, expected = _background_in_float64(48, np.random.default_rng(seed))
        assert level == expected_level and canvas.dtype == expected.dtype == np.float32
        assert np.array_equal(canvas.view(np.uint32), expected.view(np.uint32)), seed
        clipped |= {bound for bound in (0.0, 255.0) if (canvas == bound).any()}
    assert clipped == {0.0, 255.0}


def test_painting_a_canvas_makes_no_full_size_float64_copies():
    # Each such copy is handed back and faulted in again by a painter thread's arena for
    # every canvas, which cost more than the arithmetic.
    import tracemalloc

    sources = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    items = [painting._Item(i, 4 + 54 * i, 30, 50) for i in range(4)]
    painting._render(items, sources, 224, np.random.default_rng(1))  # numpy's first-call setup
    tracemalloc.start()
    try:
        painting._render(items, sources, 224, np.random.default_rng(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    canvas = 224 * 224 * 3 * np.dtype(np.float32).itemsize
    assert peak < 2.5 * canvas  # the float32 canvas and the noise plane, not 6 canvases


def test_cache_rebuild_and_interrupted_build(tmp_path, source):
    source_dir, _ = source
    out = str(tmp_path / "bench")
    first = _build(out, source_dir)
    marker = os.path.join(out, store.BENCHMARK_FILENAME)
    stamp = os.stat(os.path.join(out, "train.json")).st_mtime_ns

    again = _build(out, source_dir)
    assert again["cached"] and again["fingerprint"] == first["fingerprint"]
    assert os.stat(os.path.join(out, "train.json")).st_mtime_ns == stamp

    changed = _build(out, source_dir, num_train=3)
    assert not changed["cached"] and changed["fingerprint"] != first["fingerprint"]
    assert len(os.listdir(os.path.join(out, "images", "train"))) == 3

    os.remove(marker)  # as if the build had been interrupted before finishing
    with pytest.raises(FileNotFoundError, match="no finished benchmark"):
        store.load_benchmark_split(out, "train")
    assert not _build(out, source_dir, num_train=3)["cached"]
    assert _leftovers(out) == []


def test_a_damaged_split_is_built_again_and_only_it(tmp_path, source, monkeypatch, capsys):
    # As an interrupted copy of the folder leaves it: benchmark.json is there, a canvas
    # file is not, or is empty, or cut short. The benchmark must not shrink.
    source_dir, _ = source
    out = str(tmp_path / "bench")
    _build(out, source_dir)
    image = lambda split, i: os.path.join(out, "images", split, f"{i:06d}.jpg")
    os.remove(image("val", 4))
    open(image("test", 3), "w").close()
    with open(image("train", 1), "r+b") as f:
        f.truncate(os.path.getsize(image("train", 1)) // 2)
    build_split, built = fc.build_split, []

    def counted(split, *args, **kwargs):
        built.append(split)
        return build_split(split, *args, **kwargs)

    monkeypatch.setattr(fc, "build_split", counted)
    capsys.readouterr()
    rebuilt = _build(out, source_dir)
    err = capsys.readouterr().err
    assert built == ["train", "val", "test"] and not rebuilt["cached"]
    val_dir = os.path.join(out, "images", "val")
    assert f"{val_dir}: 1 of its 5 canvas files missing (000004.jpg)" in err
    assert "1 of its 7 canvas files empty (000003.jpg)" in err
    assert "when built (a file cut short or replaced): building the train split again" in err
    for split, n in (("train", 14), ("val", 5), ("test", 7)):
        examples, _, stats = store.load_benchmark_split(out, split)
        assert len(examples) == n and not stats.dropped_missing
    fresh = _build(tmp_path / "fresh", source_dir)["out_dir"]
    assert _split_hashes(out) == _split_hashes(fresh)
    assert _leftovers(out) == []

    built.clear()
    os.remove(image("test", 0))
    assert not _build(out, source_dir)["cached"] and built == ["test"]
    assert _build(out, source_dir)["cached"] and built == ["test"]


def test_a_build_recorded_without_file_sizes_gains_them(tmp_path, source):
    source_dir, _ = source
    out = str(tmp_path / "bench")
    _build(out, source_dir)
    marker = os.path.join(out, store.BENCHMARK_FILENAME)
    with open(marker) as f:
        record = json.load(f)
    sizes = record.pop(store.IMAGE_BYTES_KEY)
    assert sizes["train"] == sum(os.path.getsize(os.path.join(out, "images", "train", name))
                                 for name in os.listdir(os.path.join(out, "images", "train")))
    with open(marker, "w") as f:
        json.dump(record, f)
    assert _build(out, source_dir)["cached"]
    with open(marker) as f:
        assert json.load(f)[store.IMAGE_BYTES_KEY] == sizes


def _leftovers(out):
    """Temporary files and folders of a build, where the builder makes them."""
    return sorted(name for folder in (out, os.path.join(out, "images"))
                  for name in os.listdir(folder)
                  if any(t in name for t in (".partial", ".tmp", ".retired")))


def test_an_interrupted_build_keeps_its_finished_splits(tmp_path, source, monkeypatch):
    source_dir, _ = source
    out = str(tmp_path / "bench")
    build_split, built = fc.build_split, []

    def interrupted(split, *args, **kwargs):
        if split == "test":
            raise KeyboardInterrupt
        return build_split(split, *args, **kwargs)

    monkeypatch.setattr(fc, "build_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(out, source_dir)
    assert _leftovers(out) == []  # the split it stopped in leaves no partial folder
    stamps = {s: os.stat(os.path.join(out, f"{s}.json")).st_mtime_ns for s in ("train", "val")}

    def counted(split, *args, **kwargs):
        built.append(split)
        return build_split(split, *args, **kwargs)

    monkeypatch.setattr(fc, "build_split", counted)
    resumed = _build(out, source_dir)
    assert built == ["test"] and not resumed["cached"]
    assert {s: os.stat(os.path.join(out, f"{s}.json")).st_mtime_ns for s in stamps} == stamps
    assert _leftovers(out) == []
    fresh = _build(tmp_path / "fresh", source_dir)
    assert _split_hashes(out) == _split_hashes(fresh["out_dir"])
    assert {s: resumed["splits"][s]["images"] for s in SPLITS} == {
        "train": 14, "val": 5, "test": 7}


def test_a_full_disk_names_the_canvas_it_could_not_write_and_leaves_nothing(
        tmp_path, source, monkeypatch):
    source_dir, _ = source
    out = str(tmp_path / "bench")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # names no file

    monkeypatch.setattr(Image.Image, "save", no_space)
    with pytest.raises(OSError, match=r"No space left on device: '.*/images/\.train\.partial-"
                                      r"[^/]+/\d+\.\w+'"):
        _build(out, source_dir)
    assert _leftovers(out) == []


def test_two_processes_building_one_folder_leave_each_other_alone(tmp_path, source,
                                                                  monkeypatch):
    source_dir, _ = source
    out = str(tmp_path / "bench")
    os.makedirs(os.path.join(out, "images"))
    # Temporary folders: one of a live process (this test's parent), one of a process
    # that died, one of a build made before they carried a pid.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live, gone, old = (os.path.join(out, "images", f".val.partial{suffix}")
                       for suffix in (f"-{os.getppid()}", f"-{dead}", ""))
    for folder in (live, gone, old):
        os.makedirs(folder)
    build_split = fc.build_split
    config = CONFIG
    other = [sys.executable, "-c",
             "import json, sys; from ofrnn_tf.data import fashion_canvases as fc; "
             "from ofrnn_tf.data.canvas_config import CanvasConfig; "
             "fc.build_fashion_canvases(sys.argv[1], CanvasConfig(**json.loads("
             "sys.argv[3])), source_dir=sys.argv[2], allow_download=False, progress=False)",
             out, source_dir, json.dumps(config)]

    def other_process_builds_meanwhile(split, *args, **kwargs):
        if split == "train":  # while this process paints train, another builds it all
            run_checked(other)
        return build_split(split, *args, **kwargs)

    monkeypatch.setattr(fc, "build_split", other_process_builds_meanwhile)
    result = _build(out, source_dir)
    assert {s: result["splits"][s]["images"] for s in SPLITS} == {
        "train": 14, "val": 5, "test": 7}
    for split in SPLITS:
        examples, _, stats = store.load_benchmark_split(out, split)
        assert len(examples) == result["splits"][split]["images"] and not stats.dropped_missing
    assert _leftovers(out) == [os.path.basename(live)]  # the live process's own folder
    assert _split_hashes(out) == _split_hashes(_build(tmp_path / "alone", source_dir)["out_dir"])


def test_leftovers_of_other_machines_sharing_the_folder_are_left_alone(tmp_path):
    # A pid can be asked only on its own machine: another machine's folder may be in use.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = owner_tag().rpartition("-")[0]
    kept = [f".val.partial-other.machine-{dead}", f".train.retired-other.machine-{dead}",
            f".val.partial-{host}-{os.getppid()}"]
    cleared = [f".val.partial-{host}-{dead}", f".train.retired-{host}-{dead}",
               f".val.partial-{dead}", ".val.partial"]
    for name in kept + cleared:
        os.makedirs(tmp_path / name)
    remove_dead_leftovers(str(tmp_path), store.SPLIT_TMP)  # what a build does first
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_a_cached_build_clears_a_dead_builders_split_finished_since(tmp_path, source):
    source_dir, _ = source
    out = _build(tmp_path / "bench", source_dir)["out_dir"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = owner_tag().rpartition("-")[0]
    gone, live = f".train.partial-{host}-{dead}", f".val.partial-{host}-{os.getppid()}"
    for name in (gone, live):
        os.makedirs(os.path.join(out, "images", name))
    assert _build(tmp_path / "bench", source_dir)["cached"]
    assert sorted(n for n in os.listdir(os.path.join(out, "images")) if ".partial" in n) == [live]


def test_label_map_mismatch_is_refused_naming_both(tmp_path, source):
    source_dir, _ = source
    out = _build(tmp_path / "bench", source_dir)["out_dir"]
    LabelMap(list(fm.FASHION_MNIST_CLASSES[:-1]) + ["Boot"]).save(out)
    with pytest.raises(LabelMapMismatchError) as err:
        store.load_benchmark_split(out, "val")
    assert os.path.join(out, "label_map.json") in str(err.value)
    assert os.path.join(out, "val.json") in str(err.value)


def test_missing_source_and_bad_config(tmp_path, keras_caches):
    # DataNotFoundError: every command says it in one line (`cli.input_errors`).
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        fc.build_fashion_canvases(str(tmp_path / "x"), source_dir=str(tmp_path / "none"),
                                  allow_download=False, progress=False)
    with pytest.raises(ValueError, match="item_size_range"):
        CanvasConfig(canvas_size=64, item_size_range=(40, 100))
    with pytest.raises(ValueError, match="min_items"):
        CanvasConfig(min_items=0)
    for one_number in (40, ("40",), [40]):
        with pytest.raises(ValueError, match=r"item_size_range must be two whole numbers "
                                             r"\(min, max\)"):
            CanvasConfig(item_size_range=one_number)


@pytest.fixture()
def keras_caches(tmp_path, monkeypatch):
    """The three folders keras.datasets may cache Fashion-MNIST in, this test's own:
    ``{"keras_home": $KERAS_HOME's, "home": ~/.keras's, "tmp": /tmp/.keras's}``."""
    from ofrnn_tf import downloads

    homes = {"keras_home": tmp_path / "keras_home", "home": tmp_path / "home" / ".keras",
             "tmp": tmp_path / "tmp" / ".keras"}
    monkeypatch.setenv("KERAS_HOME", str(homes["keras_home"]))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(downloads, "_tmp_keras_home", lambda: str(homes["tmp"]))
    return {name: str(home / "datasets" / "fashion-mnist") for name, home in homes.items()}


@pytest.fixture()
def no_download(monkeypatch):
    """keras.datasets cannot download anything (as offline); each attempt is counted."""
    import keras

    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args or kwargs)
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    return attempts


def test_finding_fashion_mnist_imports_no_tensorflow(tmp_path):
    # scripts/setup_env.sh asks it on every run as root, before it decides on apt-get.
    folder = _fake_fashion_mnist(tmp_path / "debian")[0]
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from ofrnn_tf.data.fashion_mnist import find_fashion_mnist\n"
         f"assert find_fashion_mnist({folder!r}) == {folder!r}\n"
         "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_copies_where_keras_caches_them_are_found_in_turn_without_the_network(
        tmp_path, keras_caches, no_download, monkeypatch):
    # A read-only home (a service user's, a mounted volume): keras would skip its copy.
    home = os.path.dirname(os.path.dirname(os.path.dirname(keras_caches["home"])))
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        not os.fspath(path).startswith(home) and writable(path, mode, **kw)))
    none = str(tmp_path / "none")
    for name in ("tmp", "home", "keras_home"):  # each found before the one made earlier
        _fake_fashion_mnist(keras_caches[name], n_train=20 + len(name))
        data, source = fm.load_fashion_mnist(none)
        assert source == keras_caches[name] and len(data["train"][0]) == 20 + len(name)
    assert fm.load_fashion_mnist(_fake_fashion_mnist(tmp_path / "debian")[0])[1] == str(
        tmp_path / "debian")
    assert fm.fashion_mnist_folders(none) == [none, keras_caches["keras_home"],
                                              keras_caches["home"], keras_caches["tmp"]]
    assert no_download == []


def test_a_damaged_cached_copy_is_named_with_its_remedy(tmp_path, keras_caches, no_download):
    from ofrnn_tf.cli import InputFileError, refusal

    cached = keras_caches["keras_home"]
    _fake_fashion_mnist(cached)
    images = os.path.join(cached, "train-images-idx3-ubyte.gz")
    with open(images, "rb") as f:
        whole = f.read()
    with open(images, "wb") as f:
        f.write(whole[:len(whole) // 2])  # a copy cut short
    with pytest.raises(fm.BenchmarkSourceError) as info:
        fm.load_fashion_mnist(str(tmp_path / "none"))
    assert str(info.value).startswith(f"cannot read IDX file {images}: ")
    assert str(info.value).endswith(
        f"; replace the file (copy it again, or delete it and keras.datasets downloads it "
        f"into {cached})")
    assert no_download == []
    # The remedy is in a file, not in the command's flags: no --help pointer.
    assert isinstance(refusal(info.value), InputFileError)


def test_offline_without_a_copy_the_folders_searched_are_named(tmp_path, keras_caches,
                                                                monkeypatch):
    import socket

    import keras
    from ofrnn_tf.cli import InputFileError, refusal
    from ofrnn_tf.downloads import DOWNLOAD_SOCKET_TIMEOUT_S

    timeouts = []

    def offline(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    none = str(tmp_path / "none")
    with pytest.raises(DataNotFoundError) as info:
        fm.load_fashion_mnist(none)
    folders = [none, keras_caches["keras_home"], keras_caches["home"], keras_caches["tmp"]]
    assert str(info.value) == (
        f"Fashion-MNIST is not available: none of {', '.join(folders)} holds its four "
        f"*-ubyte.gz IDX files (install the Debian package dataset-fashion-mnist, or copy the "
        f"four files to one of these folders), and downloading them into "
        f"{keras_caches['keras_home']} failed: URL fetch failure: [Errno -3] Temporary "
        f"failure in name resolution")
    # A network that drops packets holds a download no longer than the backbones'.
    assert timeouts == [DOWNLOAD_SOCKET_TIMEOUT_S] and socket.getdefaulttimeout() is None
    # No flag of the command fixes it: no --help pointer.
    assert isinstance(refusal(info.value), InputFileError)
    with pytest.raises(DataNotFoundError, match=f"none of {none}, .* holds its four"):
        fm.load_fashion_mnist(none, allow_download=False)


def test_on_macos_a_failed_download_names_no_debian_package_and_the_certificates_remedy(
        tmp_path, keras_caches, monkeypatch):
    # python.org's Python for macOS fails every HTTPS download until its own command has
    # installed the certificate authorities; there is no Debian package to install.
    import sys

    import keras

    def unverified(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x: None -- "
                        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable "
                        "to get local issuer certificate (_ssl.c:1000)")

    monkeypatch.setattr(keras.utils, "get_file", unverified)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(DataNotFoundError) as info:
        fm.load_fashion_mnist(str(tmp_path / "none"))
    said = str(info.value)
    assert "Debian" not in said
    assert "IDX files (copy the four files to one of these folders)" in said
    assert said.endswith(
        "(_ssl.c:1000); a Python installed from python.org verifies no certificate until its "
        "\"Install Certificates.command\" (in its folder under /Applications) has run")
    with pytest.raises(DataNotFoundError) as info:
        fm.load_fashion_mnist(str(tmp_path / "none"), allow_download=False)
    assert "Debian" not in str(info.value)


def test_keras_downloads_into_its_cache_and_the_files_are_read_from_there(
        tmp_path, keras_caches, monkeypatch):
    import keras

    fetched = _fake_fashion_mnist(tmp_path / "server")[0]

    def download(fname, origin, cache_subdir):
        assert origin == "https://storage.googleapis.com/tensorflow/tf-keras-datasets/" + fname
        folder = os.path.join(os.environ["KERAS_HOME"], cache_subdir)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(fetched, fname), "rb") as f, \
                open(os.path.join(folder, fname), "wb") as out:
            out.write(f.read())
        return os.path.join(folder, fname)

    monkeypatch.setattr(keras.utils, "get_file", download)
    data, source = fm.load_fashion_mnist(str(tmp_path / "none"))
    assert source == keras_caches["keras_home"] and len(data["test"][0]) == 20


@pytest.mark.skipif(not os.path.exists(os.path.join(
    fm.DEFAULT_SOURCE_DIR, "train-images-idx3-ubyte.gz")), reason="no Debian Fashion-MNIST")
def test_real_fashion_mnist_small_build(tmp_path):
    result = fc.build_fashion_canvases(
        str(tmp_path / "real"), CanvasConfig(num_train=6, num_val=2, num_test=3),
        allow_download=False, progress=False)
    assert result["source"] == fm.DEFAULT_SOURCE_DIR
    examples, label_map, _ = store.load_benchmark_split(result["out_dir"], "test")
    assert len(examples) == 3 and label_map.num_classes == 10


# -- scenes --------------------------------------------------------------------------

# Taken from the builder before scene mode existed: the default configuration's
# fingerprint, and the annotations and decoded pixels of a tiny PNG build of CONFIG.
DEFAULT_FINGERPRINT = "ff5ccbea4c01ef69"
TINY_FINGERPRINT = "772d27130e2527a5"
TINY_PNG_ANNOTATIONS_SHA = "daf7097f6342b4a0"
TINY_PNG_PIXELS_SHA = "9fd5aab6ac9f01a7"


@pytest.fixture()
def scene_source(tmp_path):
    """Enough fake images that every split's pool holds every class."""
    return _fake_fashion_mnist(tmp_path / "fmnist_large", n_train=300, n_test=60)


def _label_matrix(coco):
    y = np.zeros((len(coco["images"]), len(fm.FASHION_MNIST_CLASSES)), bool)
    for ann in coco["annotations"]:
        y[ann["image_id"], ann["category_id"] - 1] = True
    return y


def _lifts(coco):
    """P(a, b) / (P(a) P(b)) for every pair of classes that both occur."""
    y = _label_matrix(coco)
    p = y.mean(axis=0)
    return {(a, b): (y[:, a] & y[:, b]).mean() / (p[a] * p[b])
            for a in range(y.shape[1]) for b in range(a + 1, y.shape[1]) if p[a] and p[b]}


def _split_hashes(out):
    annotations, pixels = hashlib.sha256(), hashlib.sha256()
    for split in SPLITS:
        with open(os.path.join(out, f"{split}.json"), "rb") as f:
            annotations.update(f.read())
        image_dir = os.path.join(out, "images", split)
        for name in sorted(os.listdir(image_dir)):
            with Image.open(os.path.join(image_dir, name)) as im:
                pixels.update(np.asarray(im).tobytes())
    return annotations.hexdigest()[:16], pixels.hexdigest()[:16]


def test_default_config_keeps_its_fingerprint_and_output(tmp_path, source):
    config = CanvasConfig().to_dict()
    assert "scenes" not in config and "scene_table" not in config
    assert fc.fingerprint(config) == DEFAULT_FINGERPRINT

    source_dir, _ = source
    assert _build(tmp_path / "jpg", source_dir)["fingerprint"] == TINY_FINGERPRINT
    result = _build(tmp_path / "png", source_dir, image_format="png")
    assert _split_hashes(result["out_dir"]) == (TINY_PNG_ANNOTATIONS_SHA,
                                                TINY_PNG_PIXELS_SHA)
    assert not any("scene" in im for im in _coco(result["out_dir"], "train")["images"])


def test_scene_table_is_well_formed():
    assert set(SCENE_TABLES) == {"outfits"}
    scenes = SCENE_TABLES["outfits"]
    assert 6 <= len(scenes) <= 8 and len({s.name for s in scenes}) == len(scenes)
    frequencies = [s.frequency for s in scenes]
    assert sum(frequencies) == pytest.approx(1.0) and len(set(frequencies)) > 1
    assert len({s.item_range for s in scenes}) > 1
    for scene in scenes:
        lo, hi = scene.item_range
        assert 1 <= lo <= hi <= 5, scene.name
        assert set(scene.classes) <= set(fm.FASHION_MNIST_CLASSES), scene.name
        assert sum(scene.classes.values()) == pytest.approx(1.0), scene.name
        # Concentrated: 3-4 main classes hold most of the mass, several classes absent.
        main = [p for p in scene.classes.values() if p >= 0.15]
        assert 3 <= len(main) <= 4 and sum(main) >= 0.75, scene.name
        assert len(scene.classes) <= 6, scene.name
        np.testing.assert_allclose(
            scene.class_probabilities(),
            [scene.classes.get(c, 0.0) for c in fm.FASHION_MNIST_CLASSES])


def test_scene_config_is_recorded_and_fingerprinted(tmp_path, scene_source):
    with pytest.raises(ValueError, match="scenes must be 'none' or one of"):
        CanvasConfig(scenes="picnic")
    config = CanvasConfig(scenes="outfits").to_dict()
    assert config["scenes"] == "outfits"
    assert config["scene_table"] == [s.to_dict() for s in OUTFIT_SCENES]
    assert fc.fingerprint(config) != DEFAULT_FINGERPRINT

    source_dir, _ = scene_source
    out = str(tmp_path / "bench")
    first = _build(out, source_dir, scenes="outfits")
    assert first["config"] == CanvasConfig(scenes="outfits", **CONFIG).to_dict()
    with open(os.path.join(out, store.BENCHMARK_FILENAME)) as f:
        assert json.load(f)["config"]["scene_table"] == config["scene_table"]
    for split in SPLITS:
        coco = _coco(out, split)
        assert coco["info"]["config"]["scene_table"] == config["scene_table"]
        assert all(im["scene"] in {s.name for s in OUTFIT_SCENES}
                   for im in coco["images"])
    assert _build(out, source_dir, scenes="outfits")["cached"]
    plain = _build(out, source_dir)
    assert not plain["cached"] and plain["fingerprint"] == TINY_FINGERPRINT
    assert not any("scene" in im for im in _coco(out, "val")["images"])


def test_scene_mode_is_seeded_disjoint_and_follows_its_scenes(tmp_path, scene_source):
    source_dir, data = scene_source
    a = _build(tmp_path / "a", source_dir, scenes="outfits")["out_dir"]
    b = _build(tmp_path / "b", source_dir, scenes="outfits")["out_dir"]
    c = _build(tmp_path / "c", source_dir, scenes="outfits", seed=4)["out_dir"]
    for split in SPLITS:
        assert _coco(a, split) == _coco(b, split)
        names = sorted(os.listdir(os.path.join(a, "images", split)))
        assert names == sorted(os.listdir(os.path.join(b, "images", split)))
        for name in names:
            with open(os.path.join(a, "images", split, name), "rb") as fa, \
                    open(os.path.join(b, "images", split, name), "rb") as fb:
                assert fa.read() == fb.read()
    assert _coco(a, "train")["annotations"] != _coco(c, "train")["annotations"]

    used = {s: {(x["source_split"], x["source_index"]) for x in _coco(a, s)["annotations"]}
            for s in SPLITS}
    assert {sp for sp, _ in used["train"] | used["val"]} == {"train"}
    assert {sp for sp, _ in used["test"]} == {"test"}
    assert used["train"] and used["val"] and not used["train"] & used["val"]

    scenes = {s.name: s for s in OUTFIT_SCENES}
    counts, reached_min = [], 0
    for split in SPLITS:
        coco = _coco(a, split)
        src_labels = data["t10k" if split == "test" else "train"][1]
        items = {im["id"]: [] for im in coco["images"]}
        for ann in coco["annotations"]:
            assert ann["category_id"] - 1 == src_labels[ann["source_index"]]
            items[ann["image_id"]].append(fm.FASHION_MNIST_CLASSES[ann["category_id"] - 1])
        for im in coco["images"]:
            scene = scenes[im["scene"]]
            classes = items[im["id"]]
            assert all(scene.classes.get(name, 0) > 0 for name in classes), (im, classes)
            # Placement may leave out items that do not fit, never add any.
            lo, hi = scene.item_range
            assert 1 <= len(classes) <= hi, (im, classes)
            reached_min += len(classes) >= lo
            counts.append(len(classes))
    assert reached_min >= 0.9 * len(counts)
    assert max(counts) > 4, "no canvas beyond the plain maximum"


def test_scene_mode_creates_label_co_occurrence(tmp_path, scene_source):
    source_dir, _ = scene_source
    sizes = dict(num_train=500, num_val=0, num_test=0)
    plain = _coco(_build(tmp_path / "plain", source_dir, **sizes)["out_dir"], "train")
    outfits = _coco(_build(tmp_path / "outfits", source_dir, scenes="outfits",
                           **sizes)["out_dir"], "train")
    plain_lifts, scene_lifts = _lifts(plain), _lifts(outfits)
    # Independent classes: every pair near (slightly below) 1. Scenes: some pair
    # appears together at least twice as often as independence predicts, and pairs
    # that share no scene never appear together.
    assert len(plain_lifts) == 45 and max(plain_lifts.values()) < 1.5
    assert max(scene_lifts.values()) > 2.0
    assert min(scene_lifts.values()) == 0.0 and min(plain_lifts.values()) > 0.0


def test_scene_mode_refuses_a_pool_missing_a_class(tmp_path, source):
    source_dir, _ = source
    out = tmp_path / "bench"
    with pytest.raises(ValueError, match="the val split's source images hold no"):
        _build(out, source_dir, scenes="outfits", val_source_fraction=0.02)
    assert not out.exists()

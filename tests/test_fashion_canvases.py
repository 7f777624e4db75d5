"""The embedded Fashion-MNIST canvas benchmark, built from a tiny fake IDX set."""

import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from ofrnn_tf.data import fashion_canvases as fc
from ofrnn_tf.data.registry import load_split
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError

SMALL = (8, 12)
CONFIG = dict(num_train=14, num_val=5, num_test=7, canvas_size=64, min_items=1,
              max_items=4, item_size_range=(16, 28), small_item_share=0.4,
              small_item_size_range=SMALL, val_source_fraction=0.2, seed=3, progress=False)


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
    return _fake_fashion_mnist(tmp_path / "fmnist")


def _build(out_dir, source_dir, **overrides):
    return fc.build_fashion_canvases(str(out_dir), source_dir=source_dir,
                                     allow_download=False, **{**CONFIG, **overrides})


def _coco(out_dir, split):
    with open(os.path.join(out_dir, f"{split}.json")) as f:
        return json.load(f)


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(fc.read_idx(str(tmp_path / "x.gz")), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad magic"):
        fc.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x00")
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        fc.read_idx(str(tmp_path / "short"))


def test_layout_labels_and_loading_through_coco(tmp_path, source):
    source_dir, data = source
    result = _build(tmp_path / "bench", source_dir)
    out = result["out_dir"]
    assert not result["cached"]
    assert {s: result["splits"][s]["images"] for s in fc.SPLITS} == {
        "train": 14, "val": 5, "test": 7}
    assert LabelMap.load(out).names == fc.FASHION_MNIST_CLASSES

    sizes = []
    for split in fc.SPLITS:
        coco = _coco(out, split)
        assert [c["name"] for c in coco["categories"]] == list(fc.FASHION_MNIST_CLASSES)
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
            for s in fc.SPLITS}
    assert {sp for sp, _ in used["train"] | used["val"]} == {"train"}
    assert {sp for sp, _ in used["test"]} == {"test"}
    assert all(i < 20 for _, i in used["test"])
    assert used["train"] and used["val"] and not used["train"] & used["val"]


def test_deterministic_for_a_seed(tmp_path, source):
    source_dir, _ = source
    a = _build(tmp_path / "a", source_dir)["out_dir"]
    b = _build(tmp_path / "b", source_dir)["out_dir"]
    c = _build(tmp_path / "c", source_dir, seed=4)["out_dir"]
    for split in fc.SPLITS:
        assert _coco(a, split) == _coco(b, split)
        for name in os.listdir(os.path.join(a, "images", split)):
            with open(os.path.join(a, "images", split, name), "rb") as fa, \
                    open(os.path.join(b, "images", split, name), "rb") as fb:
                assert fa.read() == fb.read()
    assert _coco(a, "train")["annotations"] != _coco(c, "train")["annotations"]


def test_cache_rebuild_and_interrupted_build(tmp_path, source):
    source_dir, _ = source
    out = str(tmp_path / "bench")
    first = _build(out, source_dir)
    marker = os.path.join(out, fc.BENCHMARK_FILENAME)
    stamp = os.stat(os.path.join(out, "train.json")).st_mtime_ns

    again = _build(out, source_dir)
    assert again["cached"] and again["fingerprint"] == first["fingerprint"]
    assert os.stat(os.path.join(out, "train.json")).st_mtime_ns == stamp

    changed = _build(out, source_dir, num_train=3)
    assert not changed["cached"] and changed["fingerprint"] != first["fingerprint"]
    assert len(os.listdir(os.path.join(out, "images", "train"))) == 3

    os.remove(marker)  # as if the build had been interrupted before finishing
    with pytest.raises(FileNotFoundError, match="no finished benchmark"):
        fc.load_benchmark_split(out, "train")
    assert not _build(out, source_dir, num_train=3)["cached"]
    assert not any(n.endswith((".partial", ".tmp")) for n in os.listdir(out))


def test_label_map_mismatch_is_refused_naming_both(tmp_path, source):
    source_dir, _ = source
    out = _build(tmp_path / "bench", source_dir)["out_dir"]
    LabelMap(list(fc.FASHION_MNIST_CLASSES[:-1]) + ["Boot"]).save(out)
    with pytest.raises(LabelMapMismatchError) as err:
        fc.load_benchmark_split(out, "val")
    assert os.path.join(out, "label_map.json") in str(err.value)
    assert os.path.join(out, "val.json") in str(err.value)


def test_missing_source_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fc.build_fashion_canvases(str(tmp_path / "x"), source_dir=str(tmp_path / "none"),
                                  allow_download=False, progress=False)
    with pytest.raises(ValueError, match="item_size_range"):
        fc.build_fashion_canvases(str(tmp_path / "x"), canvas_size=64,
                                  item_size_range=(40, 100), progress=False)
    with pytest.raises(ValueError, match="min_items"):
        fc.CanvasConfig(min_items=0)


@pytest.mark.skipif(not os.path.exists(os.path.join(
    fc.DEFAULT_SOURCE_DIR, "train-images-idx3-ubyte.gz")), reason="no Debian Fashion-MNIST")
def test_real_fashion_mnist_small_build(tmp_path):
    result = fc.build_fashion_canvases(str(tmp_path / "real"), num_train=6, num_val=2,
                                       num_test=3, allow_download=False, progress=False)
    assert result["source"] == fc.DEFAULT_SOURCE_DIR
    examples, label_map, _ = fc.load_benchmark_split(result["out_dir"], "test")
    assert len(examples) == 3 and label_map.num_classes == 10

"""The embedded benchmark: multi-object canvases of real Fashion-MNIST items.

Each canvas holds a few (by default 1–4) non-overlapping Fashion-MNIST items of
varied size (a share of them small), tinted and pasted onto a smoothly textured
background; its labels are the set of classes present. By default each item is the
next source image of an evenly cycled pool, so its class is independent of the
others' and no label predicts another. Train canvases draw items from one part of
the Fashion-MNIST training images, validation canvases from the disjoint rest, and
test canvases only from the Fashion-MNIST test images. Every split is written as
image files plus a COCO instances file with boxes, so the benchmark is read through
the same COCO adapter as MS-COCO. With ``scenes="outfits"`` each canvas first draws a
scene, which sets its item count and its items' class distribution, so labels predict
one another (the table and its statistics: `ofrnn_tf.data.canvas_config`).

Three modules hold the parts: `canvas_config` what determines the canvases,
`canvas_painting` how one split is drawn and painted, `canvas_store` the folder they
are written to (its layout) and read back from. This one builds a folder from them.

A build is cached: calling again with the same configuration returns at once, after one
``stat`` per canvas file (each must be there, none empty, and each split's files must
hold the bytes ``benchmark.json`` records, which a copy of the folder cut short does
not); a damaged split is built again, the same canvases, and a message names it. A
different configuration rebuilds the folder in place (a message says so), and an
interrupted build leaves no ``benchmark.json``, so it is never taken as finished.
Each split is built on its own (its canvases depend only on the configuration), so
a rerun after an interruption keeps the splits that were finished: those whose COCO
file records this configuration. Each process paints a split into its own
``images/.<split>.partial-<host>-<pid>`` folder and moves it into place when done, so
two processes building the same folder at once (on one machine or several) do not
disturb each other: the second to finish keeps the first one's split. Downstream
caches can key on the returned ``fingerprint``.

Build the default size (10k/1k/2k canvases of 224×224, about a minute on 2 cores)::

    python -m ofrnn_tf.data.fashion_canvases --out_dir=/tmp/fashion_canvases

and the same with scenes (the item counts of a scene replace --min_items/--max_items)::

    python -m ofrnn_tf.data.fashion_canvases --out_dir=/tmp/fashion_outfits \\
        --scenes=outfits

Source: the four ``*-ubyte.gz`` IDX files of the Debian package ``dataset-fashion-mnist``
(under ``/usr/share/datasets/fashion-mnist``), else a copy where keras.datasets caches
them (``$KERAS_HOME/datasets/fashion-mnist``, ``~/.keras/datasets/fashion-mnist`` or
``/tmp/.keras/datasets/fashion-mnist``, read even where keras would not: from a read-only
home), else keras.datasets downloads them (`ofrnn_tf.data.fashion_mnist`). Fashion-MNIST: Xiao,
Rasul, Vollgraf 2017, MIT licence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Sequence

import numpy as np

from ofrnn_tf.data import canvas_store as store
from ofrnn_tf.data.canvas_config import SCENE_TABLES, SPLITS, CanvasConfig
from ofrnn_tf.data.canvas_painting import build_split, check_scene_sources
from ofrnn_tf.data.fashion_mnist import (
    DEFAULT_SOURCE_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist)
from ofrnn_tf.jsonio import write_json
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.processes import owner_tag, remove_dead_leftovers

FORMAT_VERSION = 1


def fingerprint(config: dict[str, Any]) -> str:
    blob = json.dumps({"format_version": FORMAT_VERSION, **config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_fashion_canvases(out_dir: str, cfg: CanvasConfig = CanvasConfig(), *,
                           source_dir: str = DEFAULT_SOURCE_DIR,
                           allow_download: bool = True,
                           progress: bool = True) -> dict[str, Any]:
    """Builds (or finds already built) the canvases of `cfg` in `out_dir`.

    Returns:
        ``{"out_dir", "label_map", "fingerprint", "config", "cached",
        "small_area_fraction", "source", "splits": {split: {"annotation_file",
        "image_dir", "images", "annotations"}}}``.
    """
    config = cfg.to_dict()
    out_dir = os.path.abspath(out_dir)
    marker = os.path.join(out_dir, store.BENCHMARK_FILENAME)

    previous = store.read_json_object(marker)
    damaged: dict[str, str] = {}  # split -> what is wrong with its canvas files
    if previous is not None:
        if previous.get("config") == config and previous.get(
                "format_version") == FORMAT_VERSION and store.complete(out_dir, previous):
            damaged, image_bytes = store.check_canvases(out_dir, previous)
            if not damaged:
                store.record_image_bytes(marker, previous, image_bytes)
                with contextlib.suppress(OSError):  # a killed builder's split, finished since
                    remove_dead_leftovers(os.path.join(out_dir, "images"), store.SPLIT_TMP)
                return store.summary(out_dir, previous, cached=True)
            for split, problem in damaged.items():
                print(f"{os.path.join(out_dir, 'images', split)}: {problem}: building the "
                      f"{split} split again (the same canvases)", file=sys.stderr)
        else:
            print(f"{marker}: built with a different configuration, or incomplete; "
                  f"rebuilding {out_dir}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):  # another process may remove it too
            os.remove(marker)

    data, source = load_fashion_mnist(source_dir, allow_download)
    train_images, train_labels = data["train"]
    test_images, test_labels = data["test"]
    perm = np.random.default_rng(cfg.seed).permutation(len(train_images))
    n_val_pool = int(round(len(perm) * cfg.val_source_fraction))
    n_val_pool = min(max(n_val_pool, 1), len(perm) - 1)
    if len(perm) < 2 or len(test_images) < 1:
        raise ValueError(f"{source}: too few Fashion-MNIST images "
                         f"({len(train_images)} train, {len(test_images)} test)")
    pools = {"train": (np.sort(perm[n_val_pool:]), "train", train_images, train_labels),
             "val": (np.sort(perm[:n_val_pool]), "train", train_images, train_labels),
             "test": (np.arange(len(test_images)), "test", test_images, test_labels)}
    counts = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    if cfg.scene_table:
        for split in SPLITS:
            if counts[split]:
                check_scene_sources(cfg, split, pools[split][0], pools[split][3])

    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    remove_dead_leftovers(image_root, store.SPLIT_TMP)
    splits = {}
    for split in SPLITS:
        splits[split] = (None if split in damaged
                         else store.finished_split(out_dir, split, config))
        if splits[split] is not None:
            print(f"{out_dir}: {split} split already built, kept", file=sys.stderr)
            continue
        pool, source_split, images, labels = pools[split]
        partial_dir = os.path.join(image_root, f".{split}.partial-{owner_tag()}")
        shutil.rmtree(partial_dir, ignore_errors=True)
        os.makedirs(partial_dir)
        try:
            coco = build_split(split, counts[split], pool, source_split, images, labels,
                               cfg, partial_dir, progress)
        except BaseException:  # a full disk, Ctrl-C: the next run starts the split anew
            shutil.rmtree(partial_dir, ignore_errors=True)
            raise
        # Another process may have finished it meanwhile: the same canvases (a damaged
        # split's COCO file still records the configuration, so it is replaced regardless).
        splits[split] = (None if split in damaged
                         else store.finished_split(out_dir, split, config))
        if splits[split] is not None:
            shutil.rmtree(partial_dir, ignore_errors=True)
            continue
        store.move_into_place(partial_dir, os.path.join(image_root, split))
        # Written last: a split's COCO file recording the configuration marks it finished.
        write_json(os.path.join(out_dir, f"{split}.json"), coco, indent=None)
        splits[split] = {"images": len(coco["images"]),
                         "annotations": len(coco["annotations"])}

    LabelMap(FASHION_MNIST_CLASSES).save(out_dir)
    record = {"format_version": FORMAT_VERSION, "config": config,
              "fingerprint": fingerprint(config), "source": source,
              "small_area_fraction": cfg.small_area_fraction, "splits": splits}
    record[store.IMAGE_BYTES_KEY] = store.check_canvases(out_dir, record)[1]
    write_json(marker, record, indent=None)
    return store.summary(out_dir, record, cached=False)


# -- command line ------------------------------------------------------------------

def _main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    fields = {field.name: f[field.name].value for field in dataclasses.fields(CanvasConfig)}
    for name in ("item_size_range", "small_item_size_range"):
        fields[name] = tuple(int(v) for v in fields[name])
    result = build_fashion_canvases(f.out_dir, CanvasConfig(**fields),
                                    source_dir=f.source_dir)
    print(json.dumps(result, indent=1))


def _define_flags() -> None:
    from absl import flags

    d = CanvasConfig()
    flags.DEFINE_string("out_dir", None, "Folder to write the benchmark into.", required=True)
    flags.DEFINE_integer("num_train", d.num_train, "Training canvases.")
    flags.DEFINE_integer("num_val", d.num_val, "Validation canvases.")
    flags.DEFINE_integer("num_test", d.num_test, "Test canvases.")
    flags.DEFINE_integer("canvas_size", d.canvas_size, "Canvas side in pixels.")
    flags.DEFINE_integer("min_items", d.min_items, "Fewest items per canvas.")
    flags.DEFINE_integer("max_items", d.max_items, "Most items per canvas.")
    flags.DEFINE_list("item_size_range", [str(v) for v in d.item_size_range],
                      "min,max side of an ordinary item in pixels.")
    flags.DEFINE_float("small_item_share", d.small_item_share,
                       "Probability that an item is small.")
    flags.DEFINE_list("small_item_size_range", [str(v) for v in d.small_item_size_range],
                      "min,max side of a small item in pixels.")
    flags.DEFINE_float("val_source_fraction", d.val_source_fraction,
                       "Share of Fashion-MNIST training images kept for validation canvases.")
    flags.DEFINE_enum("image_format", d.image_format, ["jpg", "png"], "Image file format.")
    flags.DEFINE_integer("seed", d.seed, "Random seed.")
    flags.DEFINE_enum("scenes", d.scenes, ["none", *SCENE_TABLES],
                      "Scene table: each canvas draws a scene that sets its item count "
                      "and class distribution (none: independent classes).")
    flags.DEFINE_string("source_dir", DEFAULT_SOURCE_DIR,
                        "Folder holding the Fashion-MNIST *-ubyte.gz IDX files.")


if __name__ == "__main__":
    from absl import app

    from ofrnn_tf.cli import help_exits_zero

    _define_flags()
    help_exits_zero()
    app.run(_main)

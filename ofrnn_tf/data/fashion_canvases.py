"""The embedded benchmark: multi-object canvases of real Fashion-MNIST items.

Each canvas holds a few (by default 1–4) non-overlapping Fashion-MNIST items of
varied size (a share of them small), tinted and pasted onto a smoothly textured
background; its labels are the set of classes present. By default each item is the
next source image of an evenly cycled pool, so its class is independent of the
others' and no label predicts another. Train canvases draw items from one part of
the Fashion-MNIST training images, validation canvases from the disjoint rest, and
test canvases only from the Fashion-MNIST test images. Every split is written as
image files plus a COCO instances file with boxes, so the benchmark is read through
the same COCO adapter as MS-COCO.

Scenes. Real multi-label data is full of label co-occurrence, which a recurrent label
decoder can exploit. With ``scenes="outfits"`` each canvas first draws a scene (an
outfit or occasion) from `OUTFIT_SCENES`; the scene sets the canvas's item count and
the class distribution of its items, and each item's source image is then the next
one of its class in the split's pool (cycled per class, so sources are still used
about equally and the splits' sources stay disjoint). Each scene is centred on 3–4
classes with a little mass on 1–2 others; classes it leaves out never appear in it::

    scene    share  items  item classes
    casual   0.20   3-5    Pullover .28, Trouser .26, Sneaker .26, Bag .10,
                           Shirt .05, T-shirt/top .05
    beach    0.18   2-4    Sandal .30, T-shirt/top .30, Dress .20, Bag .12,
                           Sneaker .04, Shirt .04
    office   0.17   2-4    Shirt .32, Trouser .30, Bag .20, Ankle boot .10,
                           Coat .04, Pullover .04
    winter   0.15   3-5    Coat .32, Pullover .26, Ankle boot .26, Trouser .10, Bag .06
    sport    0.12   2-3    Sneaker .38, T-shirt/top .32, Trouser .20, Bag .06,
                           Pullover .04
    evening  0.10   2-3    Dress .42, Bag .28, Sandal .20, Coat .06, Ankle boot .04
    laundry  0.08   3-5    T-shirt/top .32, Shirt .30, Trouser .28, Dress .05,
                           Pullover .05

On 2,000 canvases this gives 3.3 items and 2.4 labels per canvas (2.5 and 2.3
without scenes); Coat and Ankle boot appear together 3.4 times as often as
independent labels would (Dress and Sandal 2.7 times), 19 of the 45 class pairs
appear together less than half as often (6 never: Coat with Sneaker or T-shirt/top,
Sandal with Trouser or Pullover, Ankle boot with Sneaker or T-shirt/top), and the
scene can be told from the label set for about 4 canvases in 5 (the most probable
scene given a test canvas's label set is its own for 81-82 % of them, seeds 0-2).
Sizes, the small-item share and placement are as without scenes (at 224×224 five
items still fit). Each COCO image record carries its ``"scene"``, and the table is
part of the recorded configuration (``config.scene_table``, also in each COCO file's
``info``), so editing it changes the fingerprint. Without scenes the configuration,
fingerprint and files are exactly those of builds made before scenes existed.

Layout of ``out_dir``::

    images/{train,val,test}/000000.jpg ...
    {train,val,test}.json     COCO instances; each annotation also carries
                              "source_split" and "source_index" (the Fashion-MNIST
                              image used) and "item_size" (the pasted square's side);
                              with scenes each image also carries "scene"
    label_map.json
    benchmark.json            the build configuration and the bytes each split's
                              canvas files hold, written last

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
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ofrnn_tf.data.adapters.coco import load_coco
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.data.fashion_mnist import (
    DEFAULT_SOURCE_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist)
from ofrnn_tf.host_limits import usable_cpus
from ofrnn_tf.jsonio import write_json
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.processes import owner_tag, remove_dead_leftovers
from ofrnn_tf.status import log, progress_bar

SPLITS = ("train", "val", "test")
BENCHMARK_FILENAME = "benchmark.json"
# benchmark.json's record of the bytes each split's canvas files hold.
IMAGE_BYTES_KEY = "image_bytes"
FORMAT_VERSION = 1
# Pixels of a resized item whose intensity is above this fraction count as the object
# (its tight box and its mask area).
_OBJECT_THRESHOLD = 0.1
_PLACEMENT_TRIES = 40


@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene of a scene table.

    Attributes:
        name: recorded as the ``"scene"`` of each canvas that shows it.
        frequency: share of canvases that show this scene.
        item_range: (min, max) items on such a canvas, drawn uniformly.
        classes: class name -> probability of each item being of that class; classes
            left out never appear in this scene.
    """

    name: str
    frequency: float
    item_range: tuple[int, int]
    classes: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "frequency": self.frequency,
                "item_range": list(self.item_range), "classes": dict(self.classes)}

    def class_probabilities(self) -> np.ndarray:
        """The item-class distribution over `FASHION_MNIST_CLASSES`."""
        p = np.array([self.classes.get(name, 0.0) for name in FASHION_MNIST_CLASSES])
        return p / p.sum()


# Outfits: each scene is centred on 3-4 classes that are worn or carried together,
# with a little mass on 1-2 others, so labels predict one another (Sandal with Dress,
# Coat with Ankle boot, Shirt with Trouser) and some pairs rarely meet (Sandal and Coat).
OUTFIT_SCENES = (
    Scene("casual", 0.20, (3, 5), {"Pullover": 0.28, "Trouser": 0.26, "Sneaker": 0.26,
                                   "Bag": 0.10, "Shirt": 0.05, "T-shirt/top": 0.05}),
    Scene("beach", 0.18, (2, 4), {"Sandal": 0.30, "T-shirt/top": 0.30, "Dress": 0.20,
                                  "Bag": 0.12, "Sneaker": 0.04, "Shirt": 0.04}),
    Scene("office", 0.17, (2, 4), {"Shirt": 0.32, "Trouser": 0.30, "Bag": 0.20,
                                   "Ankle boot": 0.10, "Coat": 0.04, "Pullover": 0.04}),
    Scene("winter", 0.15, (3, 5), {"Coat": 0.32, "Pullover": 0.26, "Ankle boot": 0.26,
                                   "Trouser": 0.10, "Bag": 0.06}),
    Scene("sport", 0.12, (2, 3), {"Sneaker": 0.38, "T-shirt/top": 0.32, "Trouser": 0.20,
                                  "Bag": 0.06, "Pullover": 0.04}),
    Scene("evening", 0.10, (2, 3), {"Dress": 0.42, "Bag": 0.28, "Sandal": 0.20,
                                    "Coat": 0.06, "Ankle boot": 0.04}),
    Scene("laundry", 0.08, (3, 5), {"T-shirt/top": 0.32, "Shirt": 0.30, "Trouser": 0.28,
                                    "Dress": 0.05, "Pullover": 0.05}),
)
SCENE_TABLES = {"outfits": OUTFIT_SCENES}


@dataclasses.dataclass(frozen=True)
class CanvasConfig:
    """Everything that determines the canvases (recorded in ``benchmark.json``).

    Attributes:
        num_train, num_val, num_test: canvases per split.
        canvas_size: side of the square RGB canvas in pixels.
        min_items, max_items: items per canvas, drawn uniformly (without scenes; a
            scene sets its own range). An item that cannot be placed without overlap
            after shrinking is left out, so a crowded canvas may hold fewer than
            drawn (never fewer than one).
        item_size_range: (min, max) side in pixels of an ordinary item.
        small_item_share: probability that an item is drawn from the small range.
        small_item_size_range: (min, max) side in pixels of a small item.
        val_source_fraction: share of the Fashion-MNIST training images reserved
            for the validation canvases.
        image_format: "jpg" (quality 90) or "png".
        seed: the seed of every random choice.
        scenes: "none" (every item's class is that of an evenly cycled source image,
            independent of the others) or the name of a table in `SCENE_TABLES`: each
            canvas first draws a scene, which sets its item count and its items'
            class distribution.
    """

    num_train: int = 10000
    num_val: int = 1000
    num_test: int = 2000
    canvas_size: int = 224
    min_items: int = 1
    max_items: int = 4
    item_size_range: tuple[int, int] = (40, 100)
    small_item_share: float = 0.3
    small_item_size_range: tuple[int, int] = (20, 36)
    val_source_fraction: float = 0.1
    image_format: str = "jpg"
    seed: int = 0
    scenes: str = "none"

    def __post_init__(self):
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got "
                             f"{self.min_items}, {self.max_items}")
        for name in ("item_size_range", "small_item_size_range"):
            lo, hi = _pair(name, getattr(self, name))
            object.__setattr__(self, name, (lo, hi))  # a list or numpy pair, as a tuple
            if not 4 <= lo <= hi <= self.canvas_size:
                raise ValueError(f"{name} must satisfy 4 <= min <= max <= canvas_size "
                                 f"({self.canvas_size}), got {(lo, hi)}")
        if not 0.0 <= self.small_item_share <= 1.0:
            raise ValueError(f"small_item_share must be in [0, 1], got "
                             f"{self.small_item_share}")
        if not 0.0 < self.val_source_fraction < 1.0:
            raise ValueError(f"val_source_fraction must be in (0, 1), got "
                             f"{self.val_source_fraction}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got "
                             f"{self.image_format!r}")
        if self.scenes != "none" and self.scenes not in SCENE_TABLES:
            raise ValueError(f"scenes must be 'none' or one of {sorted(SCENE_TABLES)}, "
                             f"got {self.scenes!r}")

    @property
    def scene_table(self) -> tuple[Scene, ...]:
        """The scenes drawn from; empty without scenes."""
        return SCENE_TABLES.get(self.scenes, ())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in ``benchmark.json`` and fingerprinted.

        Without scenes the ``scenes`` field is left out, so such a configuration has
        the dict (and fingerprint) it had before scenes existed. With scenes the
        table's contents are added as ``scene_table``, so editing a table changes
        the fingerprint of the builds that use it.
        """
        config = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.scenes == "none":
            del config["scenes"]
        else:
            config["scene_table"] = [scene.to_dict() for scene in self.scene_table]
        return config

    @property
    def small_area_fraction(self) -> float:
        """Image-area fraction below which an object counts as small (the area of the
        largest small item's square)."""
        return (self.small_item_size_range[1] / self.canvas_size) ** 2


def _pair(name: str, value: Any) -> tuple[int, int]:
    """`value` as a (min, max) pair of integers; ValueError naming the setting otherwise."""
    try:
        lo, hi = value
        if int(lo) != lo or int(hi) != hi:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two whole numbers (min, max) in pixels, got "
                         f"{value!r}") from None
    return int(lo), int(hi)


# -- layout ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Item:
    source_index: int
    x: int
    y: int
    size: int


def _cycle(pool: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    """Source images in shuffled passes over the pool, so each is used about equally."""
    while True:
        for i in rng.permutation(pool):
            yield int(i)


def _layout(cfg: CanvasConfig, rng: np.random.Generator,
            item_range: tuple[int, int] | None = None
            ) -> tuple[list[tuple[int, int, int]], int]:
    """(x, y, size) squares that do not overlap, largest placed first, and how many were
    drawn from `item_range` (default: the config's min_items, max_items): an item that
    finds no room even at the smallest size is left out."""
    lo, hi = item_range or (cfg.min_items, cfg.max_items)
    n = int(rng.integers(lo, hi + 1))
    sizes = []
    for _ in range(n):
        lo, hi = (cfg.small_item_size_range if rng.random() < cfg.small_item_share
                  else cfg.item_size_range)
        sizes.append(int(rng.integers(lo, hi + 1)))
    floor = min(cfg.small_item_size_range[0], cfg.item_size_range[0])
    placed: list[tuple[int, int, int]] = []
    for size in sorted(sizes, reverse=True):
        while True:
            spot = _place(size, placed, cfg.canvas_size, rng)
            if spot is not None:
                placed.append((*spot, size))
                break
            if size <= floor:
                break
            size = max(floor, int(size * 0.8))
    return placed, n


def _place(size: int, placed: Sequence[tuple[int, int, int]], canvas: int,
           rng: np.random.Generator) -> tuple[int, int] | None:
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        if all(x + size <= px or px + ps <= x or y + size <= py or py + ps <= y
               for px, py, ps in placed):
            return x, y
    return None


# -- rendering ---------------------------------------------------------------------

def _background(canvas_size: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """A canvas's background level and its float32 ``[c, c, 3]`` background: a colour near
    the level, smooth colour blotches (an 8x8 grid upsampled) and faint pixel noise, clipped
    to 0..255.

    The noise is float64, so the sum is the float64 sum rounded to float32. It is rounded
    as it is stored, in place (clipping before or after that rounding is the same, 0 and
    255 being float32 values): the painter threads' memory arenas hand full-size
    temporaries back and fault them in again for every canvas, which cost more than the
    arithmetic (benchmarks/RESULTS.md, "Canvas backgrounds painted in place").
    """
    c = canvas_size
    level = rng.uniform(0, 255)
    base = np.clip(level + rng.uniform(-40, 40, size=3), 0, 255)
    coarse = np.clip(128 + rng.normal(0, 22, size=(8, 8, 3)), 0, 255).astype(np.uint8)
    blotches = Image.fromarray(coarse).resize((c, c), Image.Resampling.BILINEAR)
    canvas = np.subtract(np.asarray(blotches), np.float32(128.0), dtype=np.float32)
    canvas += base.astype(np.float32)
    np.add(canvas, rng.normal(0, 4, size=(c, c, 1)), out=canvas, casting="same_kind")
    return level, np.clip(canvas, 0, 255, out=canvas)


def _render(items: Sequence[_Item], sources: np.ndarray, canvas_size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[list[int], int]]]:
    """Paints the items; returns the RGB canvas and per item (tight box, mask area)."""
    level, canvas = _background(canvas_size, rng)
    boxes = []
    for item in items:
        patch = Image.fromarray(sources[item.source_index]).resize(
            (item.size, item.size), Image.Resampling.BILINEAR)
        alpha = np.asarray(patch, np.float32)[..., None] / 255.0
        # A tint that stands out from the background level.
        tint = (rng.uniform(150, 255, size=3) if level < 128
                else rng.uniform(0, 105, size=3)).astype(np.float32)
        region = canvas[item.y:item.y + item.size, item.x:item.x + item.size]
        region *= 1.0 - alpha
        region += tint * alpha
        mask = alpha[..., 0] > _OBJECT_THRESHOLD
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            box = [item.x + int(cols[0]), item.y + int(rows[0]),
                   int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        else:  # an all-dark source image: fall back to its square
            box = [item.x, item.y, item.size, item.size]
        boxes.append((box, int(mask.sum()) or box[2] * box[3]))
    np.rint(canvas, out=canvas)
    return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8), boxes


# A drawer turns a canvas's generator into (scene name or None, the items to paint, the
# number of items drawn, some of which may have found no room).
_Drawer = Callable[[np.random.Generator], tuple[str | None, list[_Item], int]]


def _plain_drawer(cfg: CanvasConfig, pool: np.ndarray,
                  rng: np.random.Generator) -> _Drawer:
    """Canvases without scenes: each item is the next source image of the pool."""
    sampler = _cycle(pool, rng)

    def draw(canvas_rng: np.random.Generator) -> tuple[None, list[_Item], int]:
        spots, drawn = _layout(cfg, canvas_rng)
        return None, [_Item(next(sampler), x, y, s) for x, y, s in spots], drawn
    return draw


def _scene_drawer(cfg: CanvasConfig, pool: np.ndarray, labels: np.ndarray,
                  rng: np.random.Generator) -> _Drawer:
    """Canvases with scenes: a scene, then each item's class from the scene, then the
    next source image of that class (cycling per class, within the pool)."""
    table = cfg.scene_table
    frequencies = np.array([scene.frequency for scene in table])
    frequencies = frequencies / frequencies.sum()
    class_probabilities = [scene.class_probabilities() for scene in table]
    samplers = [_cycle(pool[labels[pool] == k], rng)
                for k in range(len(FASHION_MNIST_CLASSES))]

    def draw(canvas_rng: np.random.Generator) -> tuple[str, list[_Item], int]:
        k = int(canvas_rng.choice(len(table), p=frequencies))
        spots, drawn = _layout(cfg, canvas_rng, table[k].item_range)
        classes = canvas_rng.choice(len(FASHION_MNIST_CLASSES), size=len(spots),
                                    p=class_probabilities[k])
        return table[k].name, [_Item(next(samplers[c]), x, y, s)
                               for c, (x, y, s) in zip(classes, spots)], drawn
    return draw


def _check_scene_sources(cfg: CanvasConfig, split: str, pool: np.ndarray,
                         labels: np.ndarray) -> None:
    """Refuses a split whose source pool lacks a class that its scenes can draw."""
    needed = {name for scene in cfg.scene_table
              for name, p in scene.classes.items() if p > 0}
    present = {FASHION_MNIST_CLASSES[k] for k in np.unique(labels[pool])}
    missing = sorted(needed - present, key=FASHION_MNIST_CLASSES.index)
    if missing:
        raise ValueError(f"scenes {cfg.scenes!r}: the {split} split's source images hold "
                         f"no {', '.join(missing)}")


def _build_split(split: str, num: int, pool: np.ndarray, source_split: str,
                 images: np.ndarray, labels: np.ndarray, cfg: CanvasConfig,
                 image_dir: str, progress: bool) -> dict[str, Any]:
    """Writes one split's canvases into `image_dir`; returns its COCO dict."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    draw = (_scene_drawer(cfg, pool, labels, rng) if cfg.scene_table
            else _plain_drawer(cfg, pool, rng))
    save_kwargs = {"quality": 90} if cfg.image_format == "jpg" else {}

    def render_and_save(items: Sequence[_Item], canvas_rng: np.random.Generator,
                        file_name: str) -> list[tuple[list[int], int]]:
        pixels, boxes = _render(items, images, cfg.canvas_size, canvas_rng)
        path = os.path.join(image_dir, file_name)
        try:
            Image.fromarray(pixels).save(path, **save_kwargs)
        except OSError as error:  # a full disk's names no file
            if error.filename is None:
                error.filename = path
            raise
        return boxes

    # Drawing consumes the split's generator, so it stays in order; each canvas is then
    # painted from its own generator, so painting in threads (NumPy and PIL release the
    # GIL) gives the same files. One painter per core this process may use: more, as
    # os.cpu_count() gives in a container of a few cores on a large host, each take a
    # malloc arena (twice the memory) and time.
    coco_images, canvases, short, left_out = [], [], 0, 0
    with ThreadPoolExecutor(max_workers=usable_cpus()) as painters:
        for image_id in range(num):
            canvas_rng = np.random.default_rng(rng.integers(2**63))
            scene, items, drawn = draw(canvas_rng)
            short += len(items) < drawn
            left_out += drawn - len(items)
            file_name = _canvas_file_name(image_id, cfg.image_format)
            canvases.append((items, painters.submit(render_and_save, items, canvas_rng, file_name)))
            coco_images.append({"id": image_id, "file_name": file_name,
                                "width": cfg.canvas_size, "height": cfg.canvas_size})
            if scene is not None:
                coco_images[-1]["scene"] = scene
        annotations = []
        for image_id, (items, painted) in enumerate(progress_bar(
                canvases, desc=f"canvases {split}", unit="img", enabled=progress)):
            boxes = painted.result()
            for item, (box, area) in zip(items, boxes):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": int(labels[item.source_index]) + 1,
                    "bbox": box, "area": area, "iscrowd": 0, "item_size": item.size,
                    "source_split": source_split, "source_index": item.source_index})
    if short:
        log(f"canvases {split}: {short} of {num} canvases hold fewer items than drawn: "
            f"{left_out} item(s) found no room on the {cfg.canvas_size}-pixel canvas even at "
            f"the smallest size (fewer or smaller items, or a larger canvas, fit)")
    return {
        "info": {"description": f"Fashion-MNIST canvases, {split} split",
                 "config": cfg.to_dict()},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "fashion"}
                       for k, name in enumerate(FASHION_MNIST_CLASSES)],
    }


# -- build -------------------------------------------------------------------------

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
    marker = os.path.join(out_dir, BENCHMARK_FILENAME)

    previous = _read_json_object(marker)
    damaged: dict[str, str] = {}  # split -> what is wrong with its canvas files
    if previous is not None:
        if previous.get("config") == config and previous.get(
                "format_version") == FORMAT_VERSION and _complete(out_dir, previous):
            damaged, image_bytes = _check_canvases(out_dir, previous)
            if not damaged:
                _record_image_bytes(marker, previous, image_bytes)
                with contextlib.suppress(OSError):  # a killed builder's split, finished since
                    remove_dead_leftovers(os.path.join(out_dir, "images"), _SPLIT_TMP)
                return _summary(out_dir, previous, cached=True)
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
                _check_scene_sources(cfg, split, pools[split][0], pools[split][3])

    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    remove_dead_leftovers(image_root, _SPLIT_TMP)
    splits = {}
    for split in SPLITS:
        splits[split] = None if split in damaged else _finished_split(out_dir, split, config)
        if splits[split] is not None:
            print(f"{out_dir}: {split} split already built, kept", file=sys.stderr)
            continue
        pool, source_split, images, labels = pools[split]
        partial_dir = os.path.join(image_root, f".{split}.partial-{owner_tag()}")
        shutil.rmtree(partial_dir, ignore_errors=True)
        os.makedirs(partial_dir)
        try:
            coco = _build_split(split, counts[split], pool, source_split, images, labels,
                                cfg, partial_dir, progress)
        except BaseException:  # a full disk, Ctrl-C: the next run starts the split anew
            shutil.rmtree(partial_dir, ignore_errors=True)
            raise
        # Another process may have finished it meanwhile: the same canvases (a damaged
        # split's COCO file still records the configuration, so it is replaced regardless).
        splits[split] = None if split in damaged else _finished_split(out_dir, split, config)
        if splits[split] is not None:
            shutil.rmtree(partial_dir, ignore_errors=True)
            continue
        _move_into_place(partial_dir, os.path.join(image_root, split))
        # Written last: a split's COCO file recording the configuration marks it finished.
        write_json(os.path.join(out_dir, f"{split}.json"), coco, indent=None)
        splits[split] = {"images": len(coco["images"]),
                         "annotations": len(coco["annotations"])}

    LabelMap(FASHION_MNIST_CLASSES).save(out_dir)
    record = {"format_version": FORMAT_VERSION, "config": config,
              "fingerprint": fingerprint(config), "source": source,
              "small_area_fraction": cfg.small_area_fraction, "splits": splits}
    record[IMAGE_BYTES_KEY] = _check_canvases(out_dir, record)[1]
    write_json(marker, record, indent=None)
    return _summary(out_dir, record, cached=False)


# A split's temporary folder: ``.<split>.partial-<owner tag>`` while it is painted,
# ``.<split>.retired-<owner tag>`` while an old one is removed (no tag: an older build's).
_SPLIT_TMP = re.compile(r"\.[^.]+\.(?:partial|retired)(?:-(?P<owner>.+))?")


def _finished_split(out_dir: str, split: str, config: dict[str, Any]
                    ) -> dict[str, int] | None:
    """``{"images", "annotations"}`` of a split already built with `config` (its COCO
    file, written only once its images are in place, records the configuration), else
    None."""
    coco = _read_json_object(os.path.join(out_dir, f"{split}.json"))
    image_dir = os.path.join(out_dir, "images", split)
    info = (coco or {}).get("info")
    if not isinstance(info, dict) or info.get("config") != config or not os.path.isdir(image_dir):
        return None
    images = coco.get("images", [])
    if _canvas_files(image_dir, [image["file_name"] for image in images])[0] is not None:
        return None
    return {"images": len(images), "annotations": len(coco.get("annotations", []))}


def _move_into_place(partial_dir: str, final_dir: str) -> None:
    """Replaces `final_dir` (of another configuration, or of an interrupted build) by
    `partial_dir`. Should another process move its own in first, its canvases (the same:
    a split depends only on the configuration) stay and `partial_dir` is removed."""
    if os.path.exists(final_dir):
        retired = os.path.join(os.path.dirname(final_dir),
                               f".{os.path.basename(final_dir)}.retired-{owner_tag()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(final_dir, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(partial_dir, final_dir)
    except OSError:  # a non-empty final_dir again: another process's
        shutil.rmtree(partial_dir, ignore_errors=True)


def _read_json_object(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _canvas_file_name(image_id: int, image_format: str) -> str:
    return f"{image_id:06d}.{image_format}"


def _canvas_files(image_dir: str, names: Sequence[str]) -> tuple[str | None, int]:
    """``(problem, bytes)``: what is wrong with the canvas files `names` of `image_dir`
    (one missing or empty, as an interrupted copy of the folder leaves them; None when
    nothing is) and the bytes they hold.

    One ``stat`` per file (13,000 files in about 0.04 s), no image is read; other files in
    the folder are ignored.
    """
    sizes = {}
    try:
        with os.scandir(image_dir) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    sizes[entry.name] = entry.stat().st_size
    except FileNotFoundError:
        return f"{image_dir} is missing", 0
    for what, bad in (("missing", [n for n in names if n not in sizes]),
                      ("empty", [n for n in names if sizes.get(n) == 0])):
        if bad:
            shown = f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
            return f"{len(bad)} of its {len(names)} canvas files {what} ({shown})", 0
    return None, sum(sizes[n] for n in names)


def _check_canvases(out_dir: str, record: dict[str, Any]
                    ) -> tuple[dict[str, str], dict[str, int]]:
    """``(damaged, image_bytes)`` of a build's splits (`record` as in benchmark.json):
    what is wrong with each damaged split's canvas files (a file missing or empty, or,
    when the record has their size, files of another total size, as a copy cut short
    leaves one), and the bytes each split's files hold.

    The canvases are the build's own output, so a damaged file means a damaged cache,
    never a smaller benchmark: the split is built again.
    """
    image_format = record["config"]["image_format"]
    recorded = record.get(IMAGE_BYTES_KEY) or {}
    damaged, image_bytes = {}, {}
    for split, counts in record.get("splits", {}).items():
        names = [_canvas_file_name(i, image_format) for i in range(int(counts["images"]))]
        problem, image_bytes[split] = _canvas_files(os.path.join(out_dir, "images", split),
                                                    names)
        if problem is None and recorded.get(split, image_bytes[split]) != image_bytes[split]:
            problem = (f"its canvas files hold {image_bytes[split]} bytes, "
                       f"{recorded[split]} when built (a file cut short or replaced)")
        if problem is not None:
            damaged[split] = problem
    return damaged, image_bytes


def _record_image_bytes(marker: str, record: dict[str, Any], image_bytes: dict[str, int]
                        ) -> None:
    """Adds the canvas files' sizes to a record written before records held them, so that
    later runs notice a file cut short too; a read-only folder is left as it is."""
    if IMAGE_BYTES_KEY in record:
        return
    with contextlib.suppress(OSError):
        write_json(marker, {**record, IMAGE_BYTES_KEY: image_bytes}, indent=None)


def _complete(out_dir: str, record: dict[str, Any]) -> bool:
    return os.path.exists(os.path.join(out_dir, "label_map.json")) and all(
        os.path.exists(os.path.join(out_dir, f"{s}.json"))
        and os.path.isdir(os.path.join(out_dir, "images", s))
        for s in record.get("splits", {}))


def _summary(out_dir: str, record: dict[str, Any], cached: bool) -> dict[str, Any]:
    return {
        "out_dir": out_dir,
        "label_map": os.path.join(out_dir, "label_map.json"),
        "fingerprint": record["fingerprint"],
        "config": record["config"],
        "source": record["source"],
        "small_area_fraction": record["small_area_fraction"],
        "cached": cached,
        "splits": {s: {"annotation_file": os.path.join(out_dir, f"{s}.json"),
                       "image_dir": os.path.join(out_dir, "images", s), **counts}
                   for s, counts in record["splits"].items()},
    }


def load_benchmark_split(out_dir: str, split: str, *, check_files: bool = True
                         ) -> tuple[list[Example], LabelMap, LoadStats]:
    """Reads one split of a built benchmark through the COCO adapter, checking the
    COCO categories against the ``label_map.json`` beside them."""
    if split not in SPLITS:
        raise ValueError(f"benchmark split must be one of {SPLITS}, got {split!r}")
    marker = os.path.join(out_dir, BENCHMARK_FILENAME)
    if not os.path.exists(marker):
        raise FileNotFoundError(
            f"no finished benchmark in {out_dir} ({BENCHMARK_FILENAME} missing); build "
            f"it with: python -m ofrnn_tf.data.fashion_canvases --out_dir={out_dir}")
    return load_coco(os.path.join(out_dir, f"{split}.json"),
                     os.path.join(out_dir, "images", split),
                     label_map=LabelMap.load(out_dir), check_files=check_files)


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

    _define_flags()
    app.run(_main)

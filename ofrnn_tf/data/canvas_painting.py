"""One split of the embedded benchmark drawn and painted: each canvas's items laid out
without overlap, tinted and pasted onto a textured background, written as image files,
and the split's COCO instances (boxes, mask areas, each item's source image)."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ofrnn_tf.data.canvas_config import SPLITS, CanvasConfig
from ofrnn_tf.data.canvas_store import canvas_file_name
from ofrnn_tf.data.fashion_mnist import FASHION_MNIST_CLASSES
from ofrnn_tf.host_limits import usable_cpus
from ofrnn_tf.status import log, progress_bar

# Pixels of a resized item whose intensity is above this fraction count as the object
# (its tight box and its mask area).
_OBJECT_THRESHOLD = 0.1
_PLACEMENT_TRIES = 40


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


def check_scene_sources(cfg: CanvasConfig, split: str, pool: np.ndarray,
                        labels: np.ndarray) -> None:
    """Refuses a split whose source pool lacks a class that its scenes can draw."""
    needed = {name for scene in cfg.scene_table
              for name, p in scene.classes.items() if p > 0}
    present = {FASHION_MNIST_CLASSES[k] for k in np.unique(labels[pool])}
    missing = sorted(needed - present, key=FASHION_MNIST_CLASSES.index)
    if missing:
        raise ValueError(f"scenes {cfg.scenes!r}: the {split} split's source images hold "
                         f"no {', '.join(missing)}")


def build_split(split: str, num: int, pool: np.ndarray, source_split: str,
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
            file_name = canvas_file_name(image_id, cfg.image_format)
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

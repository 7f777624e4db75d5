"""A built benchmark folder on disk: its layout, which splits are finished, a damaged
split found, a new split moved into place, and a split read back.

Layout of ``out_dir``::

    images/{train,val,test}/000000.jpg ...
    {train,val,test}.json     COCO instances; each annotation also carries
                              "source_split" and "source_index" (the Fashion-MNIST
                              image used) and "item_size" (the pasted square's side);
                              with scenes each image also carries "scene"
    label_map.json
    benchmark.json            the build configuration and the bytes each split's
                              canvas files hold, written last

A split is finished once its COCO file records the build's configuration (written after
its canvases are in place); the build is finished once ``benchmark.json`` is written.
Checking a finished build costs one ``stat`` per canvas file: each must be there, none
empty, and each split's files must hold the bytes ``benchmark.json`` records (which a
copy of the folder cut short does not).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any, Sequence

from ofrnn_tf.data.adapters.coco import load_coco
from ofrnn_tf.data.canvas_config import SPLITS
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.jsonio import write_json
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.processes import owner_tag

BENCHMARK_FILENAME = "benchmark.json"
# benchmark.json's record of the bytes each split's canvas files hold.
IMAGE_BYTES_KEY = "image_bytes"

# A split's temporary folder: ``.<split>.partial-<owner tag>`` while it is painted,
# ``.<split>.retired-<owner tag>`` while an old one is removed (no tag: an older build's).
SPLIT_TMP = re.compile(r"\.[^.]+\.(?:partial|retired)(?:-(?P<owner>.+))?")


def finished_split(out_dir: str, split: str, config: dict[str, Any]
                   ) -> dict[str, int] | None:
    """``{"images", "annotations"}`` of a split already built with `config` (its COCO
    file, written only once its images are in place, records the configuration), else
    None."""
    coco = read_json_object(os.path.join(out_dir, f"{split}.json"))
    image_dir = os.path.join(out_dir, "images", split)
    info = (coco or {}).get("info")
    if not isinstance(info, dict) or info.get("config") != config or not os.path.isdir(image_dir):
        return None
    images = coco.get("images", [])
    if _canvas_files(image_dir, [image["file_name"] for image in images])[0] is not None:
        return None
    return {"images": len(images), "annotations": len(coco.get("annotations", []))}


def move_into_place(partial_dir: str, final_dir: str) -> None:
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


def read_json_object(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def canvas_file_name(image_id: int, image_format: str) -> str:
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


def check_canvases(out_dir: str, record: dict[str, Any]
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
        names = [canvas_file_name(i, image_format) for i in range(int(counts["images"]))]
        problem, image_bytes[split] = _canvas_files(os.path.join(out_dir, "images", split),
                                                    names)
        if problem is None and recorded.get(split, image_bytes[split]) != image_bytes[split]:
            problem = (f"its canvas files hold {image_bytes[split]} bytes, "
                       f"{recorded[split]} when built (a file cut short or replaced)")
        if problem is not None:
            damaged[split] = problem
    return damaged, image_bytes


def record_image_bytes(marker: str, record: dict[str, Any], image_bytes: dict[str, int]
                       ) -> None:
    """Adds the canvas files' sizes to a record written before records held them, so that
    later runs notice a file cut short too; a read-only folder is left as it is."""
    if IMAGE_BYTES_KEY in record:
        return
    with contextlib.suppress(OSError):
        write_json(marker, {**record, IMAGE_BYTES_KEY: image_bytes}, indent=None)


def complete(out_dir: str, record: dict[str, Any]) -> bool:
    return os.path.exists(os.path.join(out_dir, "label_map.json")) and all(
        os.path.exists(os.path.join(out_dir, f"{s}.json"))
        and os.path.isdir(os.path.join(out_dir, "images", s))
        for s in record.get("splits", {}))


def summary(out_dir: str, record: dict[str, Any], cached: bool) -> dict[str, Any]:
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

"""A generic manifest of image paths and label names, as CSV or JSON Lines.

CSV (header required; extra columns ignored, an ``id`` column is used when present)::

    path,labels
    img/0001.jpg,cat;dog
    img/0002.jpg,person|bicycle

JSON Lines (``id`` optional)::

    {"path": "img/0001.jpg", "labels": ["cat", "dog"]}

Relative paths resolve against the manifest's folder. Labels are class names; rows
with no label are dropped and counted. Without a given label map, the map is the
sorted set of names in the file.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from typing import Iterator

from ofrnn_tf.data import DataNotFoundError
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.labels import LabelMap, LabelMapMismatchError

_SEPARATORS = re.compile(r"[;|]")


def load_manifest(path: str,
                  label_map: LabelMap | None = None,
                  *,
                  check_files: bool = True) -> tuple[list[Example], LabelMap, LoadStats]:
    """Reads a CSV or JSONL manifest.

    The format is taken from the extension (``.csv``; ``.jsonl``/``.json``/
    ``.ndjson``), otherwise from the first character of the file.

    Args:
        path: the manifest file.
        label_map: the label map the caller expects; a label name outside it is
            refused with an error naming the line and both files.
        check_files: drop (and count) rows whose image file does not exist.

    Returns:
        (examples in file order, label map, load statistics).

    Raises:
        DataNotFoundError: the manifest does not exist, or none of its labelled images
            does (the first path is named).
        ValueError: a malformed line (file and line number named), or a duplicate id.
        LabelMapMismatchError: a label is not in `label_map`.
    """
    if not os.path.isfile(path):
        raise DataNotFoundError(f"manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    rows = list(_rows(path))

    if label_map is None:
        names = sorted({n for _, _, _, labels in rows for n in labels})
        if not names:
            raise ValueError(f"{path}: no labels in the manifest")
        label_map = LabelMap(names, source=path)

    stats = LoadStats()
    examples: list[Example] = []
    seen: dict[str, int] = {}
    first_missing = None
    for line_no, image_id, image, labels in rows:
        if image_id in seen:
            raise ValueError(f"{path}: line {line_no}: duplicate id {image_id!r} "
                             f"(first on line {seen[image_id]})")
        seen[image_id] = line_no
        if not labels:
            stats.dropped_unlabeled += 1
            continue
        unknown = [n for n in labels if n not in label_map.names]
        if unknown:
            raise LabelMapMismatchError(
                f"{path}: line {line_no}: labels {unknown} are not in the label map "
                f"{label_map.source or '<given label map>'} ({label_map.num_classes} "
                f"classes)")
        image = image if os.path.isabs(image) else os.path.join(base, image)
        if check_files and not os.path.exists(image):
            stats.dropped_missing += 1
            first_missing = first_missing or image
            continue
        examples.append(Example(image_id=image_id, image=image,
                                label_ids=tuple(sorted(set(label_map.ids_of(labels))))))
    stats.images = len(examples)
    if stats.dropped_unlabeled or stats.dropped_missing:
        print(f"{path}: {stats} (of {len(rows)} listed)", file=sys.stderr)
    if not examples and stats.dropped_missing:
        raise DataNotFoundError(
            f"{path}: none of the {stats.dropped_missing} labelled images exists (first: "
            f"{first_missing}); relative paths are read from the manifest's folder {base}")
    return examples, label_map, stats


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


def _rows(path: str) -> Iterator[tuple[int, str, str, list[str]]]:
    """Yields (line number, image id, image path as written, label names)."""
    if _format(path) == "csv":
        yield from _csv_rows(path)
    else:
        yield from _jsonl_rows(path)


def _csv_rows(path: str) -> Iterator[tuple[int, str, str, list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty manifest (expected a header 'path,labels')")
        header = [h.strip().lower() for h in header]
        if "path" not in header or "labels" not in header:
            raise ValueError(f"{path}: line 1: header must name the columns 'path' and "
                             f"'labels', got {header}")
        col_path, col_labels = header.index("path"), header.index("labels")
        col_id = header.index("id") if "id" in header else None
        for row in reader:
            line_no = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line_no}: {len(row)} fields, the header "
                                 f"has {len(header)} (quote labels holding commas)")
            image = row[col_path].strip()
            if not image:
                raise ValueError(f"{path}: line {line_no}: empty 'path'")
            labels = [n.strip() for n in _SEPARATORS.split(row[col_labels]) if n.strip()]
            image_id = row[col_id].strip() if col_id is not None else image
            yield line_no, image_id or image, image, labels


def _jsonl_rows(path: str) -> Iterator[tuple[int, str, str, list[str]]]:
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_no}: expected a JSON object")
            image = record.get("path")
            if not isinstance(image, str) or not image:
                raise ValueError(f"{path}: line {line_no}: missing or empty 'path'")
            labels = record.get("labels")
            if isinstance(labels, str):
                labels = [n for n in _SEPARATORS.split(labels)]
            if not isinstance(labels, list) or not all(
                    isinstance(n, (str, int)) and not isinstance(n, bool) for n in labels):
                raise ValueError(f"{path}: line {line_no}: 'labels' must be a list of "
                                 f"class names, got {labels!r}")
            labels = [str(n).strip() for n in labels if str(n).strip()]
            image_id = str(record.get("id", image))
            yield line_no, image_id, image, labels

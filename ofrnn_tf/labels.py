"""The label map: class names in id order, travelling beside every artefact.

Every directory the pipeline writes (canvases, feature shards, work directories,
exports) holds a ``label_map.json``. Readers compare the map they expect with the
one on disk and refuse to go on when they differ, naming both files.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from ofrnn_tf.jsonio import write_text

LABEL_MAP_FILENAME = "label_map.json"


class LabelMapMismatchError(ValueError):
    """Two artefacts were built with different label maps."""


class LabelMap:
    """Ordered class names; the position of a name is its label id.

    Args:
        names: class names, unique, in label-id order.
        source: where the map was read from (used in error messages).
    """

    def __init__(self, names: Iterable[str], source: str | None = None):
        self.names = tuple(str(n) for n in names)
        if not self.names:
            raise ValueError("a label map needs at least one class")
        if len(set(self.names)) != len(self.names):
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"duplicate class names in label map: {dupes}")
        for name in self.names:
            problem = not_utf8_problem(name)
            if problem:
                raise ValueError(f"class name {name!r} {problem}: fix the name")
        self.source = source
        self._ids = {n: i for i, n in enumerate(self.names)}

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        """Whether `name` is one of the classes (looked up, not searched for)."""
        return name in self._ids

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        where = f", source={self.source!r}" if self.source else ""
        return f"LabelMap({self.num_classes} classes{where})"

    def id_of(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(f"unknown class {name!r}; known: {list(self.names)}") from None

    def ids_of(self, names: Sequence[str]) -> list[int]:
        return [self.id_of(n) for n in names]

    def names_of(self, ids: Iterable[int]) -> list[str]:
        return [self.names[i] for i in ids if i >= 0]

    # -- files ---------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"names": list(self.names)}, indent=1)

    def save(self, directory_or_file: str) -> str:
        """Writes the map (atomically) and returns the file path."""
        return write_text(_as_file(directory_or_file), self.to_json())

    @classmethod
    def load(cls, directory_or_file: str) -> "LabelMap":
        path = _as_file(directory_or_file)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no label map at {path}")
        with open(path) as f:
            try:
                data = json.load(f)
            except (json.JSONDecodeError, RecursionError) as e:  # Recursion: nested too deep
                raise ValueError(f"{path}: not a valid label map JSON ({e})") from None
        names = data.get("names") if isinstance(data, dict) else data
        if not isinstance(names, list):
            raise ValueError(f"{path}: expected {{'names': [...]}}")
        try:
            return cls(names, source=path)
        except ValueError as e:  # no class, or one twice
            raise ValueError(f"{path}: {e}") from None

    def check_same(self, other: "LabelMap") -> None:
        """Raises `LabelMapMismatchError` naming both maps unless they are equal."""
        if self == other:
            return
        a = self.source or "<expected label map>"
        b = other.source or "<given label map>"
        detail = _first_difference(self.names, other.names)
        raise LabelMapMismatchError(
            f"label map mismatch: {a} ({self.num_classes} classes) vs {b} "
            f"({other.num_classes} classes): {detail}. Rebuild the artefact with the "
            f"same label map, or point to matching data.")


def not_utf8_problem(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (a lone surrogate: half of a character such
    as an emoji, which a JSON escape like "\\ud83d" can hold but no tensor or file can),
    or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (f"holds U+{ord(text[error.start]):04X}, half of a UTF-16 surrogate pair "
                f"(the other half missing: text cut in the middle of a character such as "
                f"an emoji)")
    return None


def listed_names(names: Sequence[str], most: int) -> str:
    """Up to `most` class names, quoted and comma-separated, then how many more."""
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def reconcile(expected: "LabelMap | None", found: LabelMap) -> LabelMap:
    """The label map to use: `found` when nothing was expected, else `expected` once
    `found` is checked to be the same (`LabelMapMismatchError` naming both otherwise)."""
    if expected is None:
        return found
    expected.check_same(found)
    return expected


def _as_file(directory_or_file: str) -> str:
    if directory_or_file.endswith(".json"):
        return directory_or_file
    return os.path.join(directory_or_file, LABEL_MAP_FILENAME)


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"id {i} is {x!r} vs {y!r}"
    return f"lengths differ ({len(a)} vs {len(b)})"

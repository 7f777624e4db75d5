"""The record every data adapter yields."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

# (x, y, width, height) in pixels of the original image, COCO convention.
Box = Tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Example:
    """One image with its label set.

    Attributes:
        image_id: unique id within its split (string form of the source id).
        image: a file path, or the encoded image bytes.
        label_ids: sorted unique label ids (indices into the data set's `LabelMap`).
        label_areas: for each entry of `label_ids`, the area of that class's largest
            object as a fraction of the image area, or None when boxes are unknown.
            The embedded benchmark's small-object AP splits on it; other data sets
            (COCO's boxes give it too) report no AP-small or AP-large.
        boxes: optional ((label_id, box), ...) pairs.
    """

    image_id: str
    image: Union[str, bytes]
    label_ids: Tuple[int, ...]
    label_areas: Optional[Tuple[float, ...]] = None
    boxes: Optional[Tuple[Tuple[int, Box], ...]] = None

    def __post_init__(self):
        if self.label_areas is not None and len(self.label_areas) != len(self.label_ids):
            raise ValueError(
                f"image {self.image_id}: {len(self.label_areas)} label areas for "
                f"{len(self.label_ids)} labels")


# Missing images a load names in its summary (the rest are counted).
_NAMED_MISSING = 3


@dataclasses.dataclass
class LoadStats:
    """What an adapter kept and dropped of the images `source` (a data file) lists."""

    source: str = ""
    listed: int = 0
    images: int = 0
    dropped_unlabeled: int = 0
    dropped_missing: int = 0
    # The first images dropped as missing: each path and where the data file lists it
    # ("line 7", "image id 42"), so that the user can find the rows.
    named_missing: list = dataclasses.field(default_factory=list)

    def missing(self, path: str, where: str = "") -> None:
        """Counts a listed image whose file does not exist (naming the first few)."""
        self.dropped_missing += 1
        if len(self.named_missing) < _NAMED_MISSING:
            self.named_missing.append(f"{path}, {where}" if where else path)

    @property
    def first_missing(self) -> Optional[str]:
        return self.named_missing[0] if self.named_missing else None

    def __str__(self) -> str:
        text = (f"{self.source}: of {self.listed} listed, " if self.source else "") + (
            f"{self.images} images kept, {self.dropped_unlabeled} dropped with no label, "
            f"{self.dropped_missing} dropped with a missing file")
        if self.named_missing:
            more = self.dropped_missing - len(self.named_missing)
            text += (f" (first: {'; '.join(self.named_missing)}"
                     f"{f'; and {more} more' if more else ''})")
        return text

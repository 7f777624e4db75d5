"""Data sets as lists of `Example` records plus a `LabelMap`."""

import unicodedata
from typing import Iterable, Optional

from ofrnn_tf.labels import LabelMap, LabelMapMismatchError, reconcile


class DataNotFoundError(FileNotFoundError):
    """A file of a data set is not where the run's settings (``--data.*``) point."""


class ImagesNotFoundError(DataNotFoundError):
    """None of the images a data file lists is where it says (a data set moved without its
    images, or relative paths read from another folder)."""


class DataFileError(ValueError):
    """A data set's own files cannot be read as such: a malformed line, a text that is
    not UTF-8, an unknown label, an image listed twice. The message names the file (and
    the line or record); the data, not the code, is at fault."""


class DataLabelMapError(DataFileError, LabelMapMismatchError):
    """The classes of one data file differ from those of another file of the run (a
    label a test manifest names that train does not, other COCO categories)."""


def file_label_map(names: Iterable[str], source: str, expected: Optional[LabelMap],
                   where: str = "") -> LabelMap:
    """The label map a data file's class list `names` makes (each name in Unicode NFC),
    or `expected` once checked to be the same: `DataFileError` for a list that is no
    label map (naming `source` and `where` in it), `DataLabelMapError` for a mismatch."""
    try:
        found = LabelMap([unicodedata.normalize("NFC", n) for n in names], source=source)
    except ValueError as e:
        raise DataFileError(f"{source}: {where + ': ' if where else ''}{e}") from None
    try:
        return reconcile(expected, found)
    except LabelMapMismatchError as e:
        raise DataLabelMapError(str(e)) from None

"""Data sets as lists of `Example` records plus a `LabelMap`."""

from ofrnn_tf.labels import LabelMapMismatchError


class DataNotFoundError(FileNotFoundError):
    """A file of a data set is not where the run's settings (``--data.*``) point."""


class DataFileError(ValueError):
    """A data set's own files cannot be read as such: a malformed line, a text that is
    not UTF-8, an unknown label, an image listed twice. The message names the file (and
    the line or record); the data, not the code, is at fault."""


class DataLabelMapError(DataFileError, LabelMapMismatchError):
    """The classes of one data file differ from those of another file of the run (a
    label a test manifest names that train does not, other COCO categories)."""

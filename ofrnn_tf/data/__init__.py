"""Data sets as lists of `Example` records plus a `LabelMap`."""


class DataNotFoundError(FileNotFoundError):
    """A file of a data set is not where the run's settings (``--data.*``) point."""

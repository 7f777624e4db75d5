"""Data sets as lists of `Example` records plus a `LabelMap`."""

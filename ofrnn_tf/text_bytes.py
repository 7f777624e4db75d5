"""Which Unicode encoding a text file's bytes are in, where it is not UTF-8.

Files people hand the commands (a manifest, a `--files_from` list) are UTF-8 for the
project; Windows tools often write UTF-16 instead (PowerShell's `Out-File`, Excel's
"Unicode text"), with or without a byte-order mark.
"""

from __future__ import annotations

from typing import Optional

# UTF-32's marks first: its little-endian mark begins with UTF-16's.
_MARKS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
          (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def marked_encoding(raw: bytes) -> Optional[str]:
    """"utf-16" or "utf-32" where `raw` begins with that encoding's byte-order mark."""
    return next((name for mark, name in _MARKS if raw.startswith(mark)), None)


def wide_without_mark(raw: bytes) -> bool:
    """Whether `raw`, holding no mark, reads as UTF-16 by its NUL bytes: every other byte
    of ASCII text is NUL there (and such bytes still decode as UTF-8), where a list of
    NUL-separated names (`find -print0`) has one NUL a name."""
    return marked_encoding(raw) is None and raw.count(b"\0") * 3 > len(raw)

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


def unmarked_wide_encoding(raw: bytes) -> Optional[str]:
    """"utf-16le", "utf-16be", "utf-32le" or "utf-32be" where `raw`, holding no mark,
    reads as one by its NUL bytes: half of the bytes of ASCII text in UTF-16, three
    quarters in UTF-32 (and such bytes still decode as UTF-8), where a list of
    NUL-separated names (`find -print0`) has one NUL a name; the byte order by where
    the NULs fall (after a letter's byte in little-endian). None otherwise."""
    if marked_encoding(raw) is not None:
        return None
    nuls = raw.count(b"\0")
    width = 4 if nuls * 5 > len(raw) * 3 else 2 if nuls * 3 > len(raw) else 0
    if not width:
        return None
    little = raw[0::width].count(0) < raw[width - 1::width].count(0)
    return f"utf-{8 * width}{'le' if little else 'be'}"

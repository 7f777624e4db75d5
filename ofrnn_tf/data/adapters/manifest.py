"""A generic manifest of image paths and label names, as CSV or JSON Lines.

CSV (header required; extra columns ignored, an ``id`` column is used when present)::

    path,labels
    img/0001.jpg,cat;dog
    img/0002.jpg,person|bicycle

JSON Lines (``id`` optional)::

    {"path": "img/0001.jpg", "labels": ["cat", "dog"]}

or, in a ``.json`` file, a JSON array of such objects. The file is UTF-8 text.

Relative paths resolve against the manifest's folder. Labels are class names, separated
by ``;`` or ``|`` in CSV (a comma separates columns: quote a field only when a class
name itself holds one) and in a JSON string (a JSON list is taken as it is); rows with
no label (an empty cell, ``[]`` or ``null``) are dropped and counted. Names are read in
Unicode NFC form, so a name typed (``café`` as one character) and one taken from a macOS
file name (``e`` and a combining accent) are one class. Without a given label map, the
map is the sorted set of names in the file.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import sys
import unicodedata
from typing import Iterable, Iterator

from ofrnn_tf.data import (
    DataFileError, DataLabelMapError, DataNotFoundError, ImagesNotFoundError)
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.labels import LabelMap, listed_names, not_utf8_problem
from ofrnn_tf.text_bytes import marked_encoding, unmarked_wide_encoding

_SEPARATORS = re.compile(r"[;|]")
# Class names printed when a manifest's label map is built (the rest counted).
_SHOWN_CLASSES = 20

# (where in the file: "line 7" or "item 3 (line 12)", image id, image path as written,
# label names)
Row = tuple[str, str, str, list[str]]


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
        DataFileError: a malformed line (a CSV quote never closed, JSON nested too deep
            to read), text that is not UTF-8 (file and line number named), a duplicate
            id or the same image file twice.
        DataLabelMapError: a label is not in `label_map` (a `LabelMapMismatchError`).
    """
    if not os.path.isfile(path):
        raise DataNotFoundError(f"manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    rows = list(_rows(path))

    if label_map is None:
        names = sorted({n for _, _, _, labels in rows for n in labels})
        if not names:
            raise DataFileError(f"{path}: no labels in the manifest")
        label_map = LabelMap(names, source=path)
        _report_classes(path, rows, label_map)

    stats = LoadStats(path, len(rows))
    examples: list[Example] = []
    seen: dict[str, str] = {}
    seen_files: dict[str, str] = {}
    for where, image_id, image, labels in rows:
        if image_id in seen:
            raise DataFileError(f"{path}: {where}: duplicate id {image_id!r} "
                                f"(first on {seen[image_id]})")
        seen[image_id] = where
        image = image if os.path.isabs(image) else os.path.join(base, image)
        file_key = os.path.normcase(os.path.normpath(image))
        if file_key in seen_files:
            raise DataFileError(f"{path}: {where}: the image {os.path.normpath(image)} is "
                                f"listed twice (first on {seen_files[file_key]}): list each "
                                f"image once, with all of its labels")
        seen_files[file_key] = where
        if not labels:
            stats.dropped_unlabeled += 1
            continue
        unknown = [n for n in labels if n not in label_map]
        if unknown:
            raise DataLabelMapError(_unknown_labels_message(path, where, unknown, label_map,
                                                            rows))
        # Without `check_files` no file is looked at, but a name that may be spelt in
        # the other Unicode form (eval mode compares the run with its data by path).
        if (check_files or not image.isascii()) and not os.path.exists(image):
            found = _in_other_unicode_form(image)
            if found is not None:
                image = found
            elif check_files:
                stats.missing(image, where)
                continue
        examples.append(Example(image_id=image_id, image=image,
                                label_ids=tuple(sorted(set(label_map.ids_of(labels))))))
    stats.images = len(examples)
    if not examples and stats.dropped_missing:
        raise ImagesNotFoundError(
            f"{path}: none of the {stats.dropped_missing} labelled images exists (first: "
            f"{stats.first_missing}); relative paths are read from the manifest's folder "
            f"{base}")
    return examples, label_map, stats


def _in_other_unicode_form(image: str) -> str | None:
    """`image` spelt in the other Unicode form (NFC or NFD) when a file of that name
    exists: a name typed in a manifest (``café`` as one character) and the same file
    copied from macOS (``e`` and a combining accent) look alike and differ in bytes."""
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, image)
        if other != image and os.path.exists(other):
            return other
    return None


def _unknown_labels_message(path: str, where: str, unknown: list[str],
                            label_map: LabelMap, rows: list[Row]) -> str:
    """Names the row, the labels and the map, and how many rows of the file hold such
    labels (each label with its count), so that one edit mends them all. The map of a
    manifest folder is its training file's classes (a class must have training images
    to be learnt), so the remedy is an edit of the data: no flag changes the map."""
    source = label_map.source or "<given label map>"
    by_look = {_look(n): n for n in label_map.names}
    alike = {n: by_look[_look(n)] for n in unknown if _look(n) in by_look}
    held = ("; it has " + ", ".join(f"{alike[n]!r} (not {n!r})" for n in alike)
            if alike else "")
    text = (f"{path}: {where}: labels {unknown} are not in the label map {source} "
            f"({label_map.num_classes} classes{held})")
    known = set(label_map.names)
    counts = collections.Counter(n for *_, labels in rows for n in set(labels) if n not in known)
    holding = sum(any(n not in known for n in labels) for *_, labels in rows)
    extent = ""
    if holding > 1:
        shown = ", ".join(f"{name!r} on {count}" for name, count in counts.most_common(5))
        more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
        extent = (f" ({holding} rows of {os.path.basename(path)} hold such labels: "
                  f"{shown}{more})")
    if label_map.source is None:
        return f"{text}: remove these labels from the row{extent}"
    return (f"{text}, which holds the classes of the training images: remove these labels "
            f"from the row, or add training images of the class to {source}{extent}")


def _names(labels: Iterable) -> list[str]:
    """The non-empty label names of a row, stripped and in Unicode NFC form."""
    names = (unicodedata.normalize("NFC", str(n).strip()) for n in labels)
    return [n for n in names if n]


def _look(name: str) -> str:
    """What a class name looks like to a reader: its case and inner spacing left out
    (``Ankle  Boot`` looks like ``ankle boot``)."""
    return " ".join(name.split()).casefold()


def _report_classes(path: str, rows: list[Row], label_map: LabelMap) -> None:
    """Prints the label map built from `path`, and warns of class names holding a comma
    (``"a,b"`` quoted in CSV, or a JSON string ``"a, b"``: mostly two labels meant) and of
    names that differ only in case or in the spaces inside them (``Cat`` and ``cat``,
    ``Ankle boot`` and ``Ankle  boot``: mostly one class meant)."""
    names = label_map.names
    print(f"{path}: {len(names)} classes: {listed_names(names, _SHOWN_CLASSES)}",
          file=sys.stderr)
    with_comma = [n for n in names if "," in n]
    if with_comma:
        first = next(where for where, _, _, labels in rows
                     if any(n in with_comma for n in labels))
        print(f"{path}: WARNING: class name(s) holding a comma: {with_comma} (first on "
              f"{first}). Labels are separated by ';' or '|', not ','; if the comma was "
              f"meant to separate two labels, write them as 'a;b'", file=sys.stderr)
    by_look: dict[str, list[str]] = {}
    for name in names:
        by_look.setdefault(_look(name), []).append(name)
    alike = [group for group in by_look.values() if len(group) > 1]
    if alike:
        print(f"{path}: WARNING: class names that differ only in case or spacing are distinct "
              f"classes: {'; '.join(', '.join(repr(n) for n in group) for group in alike)}. "
              f"Write each class one way if one class is meant", file=sys.stderr)


def _read_text(path: str) -> str:
    """The manifest's text: UTF-8, or UTF-16 or UTF-32 with a byte-order mark; any other
    file (a spreadsheet's cp1252, say) is refused naming the first line that does not
    decode."""
    with open(path, "rb") as f:
        raw = f.read()
    encoding = marked_encoding(raw) or "utf-8-sig"
    named = "UTF-8" if encoding == "utf-8-sig" else encoding.upper()
    wide = unmarked_wide_encoding(raw)
    source = encoding if encoding != "utf-8-sig" else wide or "cp1252"
    advice = (f"save the manifest as UTF-8 (in Excel: 'CSV UTF-8'; or convert it, e.g. "
              f"iconv -f {source} -t utf-8)")
    if wide:
        raise DataFileError(f"{path}: not UTF-8 text ({wide.upper()} without a byte-order "
                            f"mark, by its NUL bytes); {advice}")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFileError(f"{path}: line {line}: not {named} text (byte "
                            f"0x{raw[e.start]:02x}); {advice}") from None


def _format(path: str, text: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    first = text.lstrip()[:1]
    return "jsonl" if first in ("{", "[") else "csv"


def _rows(path: str) -> Iterator[Row]:
    """Yields (where, image id, image path as written, label names)."""
    text = _read_text(path)
    if _format(path, text) == "csv":
        yield from _csv_rows(path, text)
    elif text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        yield from _jsonl_rows(path, text)


def _csv_rows(path: str, text: str) -> Iterator[Row]:
    base = os.path.dirname(os.path.abspath(path))  # what relative paths are read from
    records = _csv_records(path, text)
    _, header = next(records, (1, None))
    if header is None:
        raise DataFileError(f"{path}: empty manifest (expected a header 'path,labels')")
    header = [h.strip().lower() for h in header]
    if "path" not in header or "labels" not in header:
        hint = next((f": this file separates its fields by {sep!r}, a manifest by ','"
                     for sep in ("\t", ";") if len(header) == 1 and sep in header[0]), "")
        raise DataFileError(f"{path}: line 1: header must name the columns 'path' and "
                            f"'labels', got {header}{hint}")
    col_path, col_labels = header.index("path"), header.index("labels")
    col_id = header.index("id") if "id" in header else None
    for line_no, row in records:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise DataFileError(
                f"{path}: line {line_no}: {len(row)} fields, the header has {len(header)}: "
                f"labels are separated by ';' or '|', not ',' (e.g. img/1.jpg,cat;dog); "
                f"quote a field only when a class name itself holds a comma")
        if len(row) != len(header):
            raise DataFileError(f"{path}: line {line_no}: {len(row)} fields, the header "
                                f"has {len(header)}")
        cell = row[col_path]
        listed = cell.strip()  # spaces typed around it (`img/1.jpg, cat`) are dropped ...
        if not listed:
            raise DataFileError(f"{path}: line {line_no}: empty 'path'")
        spaced = listed != cell and os.path.exists(os.path.join(base, cell))
        image = cell if spaced else listed  # ... unless a file is named with them
        labels = _names(_SEPARATORS.split(row[col_labels]))
        image_id = row[col_id].strip() if col_id is not None else listed
        yield f"line {line_no}", image_id or listed, image, labels


def _csv_records(path: str, text: str) -> Iterator[tuple[int, list[str]]]:
    """The CSV rows of `text`, each with the line it starts on. A quote never closed
    (the reader would give the rest of the file as one field, or stop past its field
    size limit) is a DataFileError naming that line."""
    lines = _numbered_lines(text)
    reader = csv.reader(lines)
    while True:
        line_no = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as error:
            raise DataFileError(_unreadable_csv_row(path, line_no, reader.line_num,
                                                    error)) from None
        if row is None:
            return
        if any("\n" in cell or "\r" in cell for cell in row):
            if _ends_in_quotes(lines[line_no - 1:reader.line_num]):
                raise DataFileError(_unclosed_quote(
                    path, line_no, f" before the end of the file (line {reader.line_num}), "
                                   f"so the rest of the file was read as one field"))
        yield line_no, row


def _numbered_lines(text: str) -> list[str]:
    """The lines of `text` as an editor numbers them, each with its end: ended by "\n" (a
    "\r" before it, or a stray one inside, belongs to the line), or by "\r" in a file
    that holds no "\n" (old Mac line ends). Universal newlines would count every stray
    "\r" (a CRLF file converted twice ends its lines in "\r\r\n") as a line of its own,
    and every line number after it would be off."""
    end = "\n" if "\n" in text or "\r" not in text else "\r"
    pieces = text.split(end)
    return [piece + end for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _unreadable_csv_row(path: str, start: int, stop: int, error: csv.Error) -> str:
    """The message for a CSV row the reader gave up on: it started on line `start` and
    stopped on line `stop`. Past the field size limit on a later line than its own, a
    quote opened in the row is not closed (only a quoted field holds a line break)."""
    limit = csv.field_size_limit()
    if "field limit" in str(error):
        if stop > start:
            return _unclosed_quote(path, start, f" within {limit} characters (up to line "
                                                f"{stop})")
        return (f"{path}: line {start}: a field longer than {limit} characters, the most a "
                f"CSV field may hold")
    if "new-line character seen in unquoted field" in str(error):
        return (f"{path}: line {start}: a carriage return ('\\r') inside the row, not at its "
                f"end (left by an edit of a file with Windows line ends, say): remove it, or "
                f"quote the field that holds it")
    return f"{path}: line {start}: not readable as CSV ({error})"


def _unclosed_quote(path: str, line_no: int, how: str) -> str:
    """The message for a quote opened in the row on line `line_no` and never closed."""
    return (f"{path}: line {line_no}: a quoted field is not closed: a '\"' opens it and no "
            f"'\"' ends it{how}; close it, or remove the '\"' (quote a field only when a "
            f"class name itself holds a comma)")


def _ends_in_quotes(row_lines: list[str]) -> bool:
    """Whether the CSV row on `row_lines` ends inside a quoted field, which only the end
    of the file does: the reader then gives the rest of the file as one field, without a
    word."""
    try:
        next(csv.reader(row_lines, strict=True), None)
    except csv.Error as error:
        return "unexpected end of data" in str(error)
    return False


def _jsonl_rows(path: str, text: str) -> Iterator[Row]:
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataFileError(_nested_too_deep(path, f"line {line_no}")) from None
        yield _record_row(path, f"line {line_no}", record)


def _json_array_rows(path: str, text: str) -> Iterator[Row]:
    """The objects of a JSON array (a ``.json`` file written with ``json.dump(list)``),
    each named by its position and the line it starts on."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1

    def skip_blanks(i: int) -> int:
        while i < len(text) and text[i].isspace():
            i += 1
        return i

    counted = [0, 1]  # the position the lines are counted up to, and its line

    def line_of(i: int) -> int:
        # Asked in the order of the text: only the newlines since the last position are
        # counted (from the start each time, a file of 10^5 items took hours).
        start, line = counted if i >= counted[0] else (0, 1)
        counted[:] = i, line + text.count("\n", start, i)
        return counted[1]

    item = 0
    while True:
        position = skip_blanks(position)
        if position >= len(text):
            raise DataFileError(f"{path}: line {line_of(position)}: not valid JSON (the "
                                f"array is not closed with ']')")
        if text[position] == "]":
            break
        if item:
            if text[position] != ",":
                raise DataFileError(f"{path}: line {line_of(position)}: not valid JSON "
                                    f"(expected ',' or ']' after item {item})")
            position = skip_blanks(position + 1)
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataFileError(_nested_too_deep(
                path, f"item {item + 1} (line {line_of(position)})")) from None
        item += 1
        yield _record_row(path, f"item {item} (line {line_of(position)})", record)
        position = end
    after = skip_blanks(position + 1)
    if after < len(text):
        raise DataFileError(f"{path}: line {line_of(after)}: not valid JSON (text after the "
                            f"array)")


def _nested_too_deep(path: str, where: str) -> str:
    """The message for JSON nested deeper than Python's parser goes (a RecursionError)."""
    return (f"{path}: {where}: JSON nested too deep to read; each item of a manifest is an "
            f'object {{"path": ..., "labels": [...]}}')


def _record_row(path: str, where: str, record) -> Row:
    if not isinstance(record, dict):
        raise DataFileError(f"{path}: {where}: expected a JSON object "
                            f'{{"path": ..., "labels": [...]}}, got {type(record).__name__}')
    image = record.get("path")
    if not isinstance(image, str) or not image.strip():
        raise DataFileError(f"{path}: {where}: missing or empty 'path'")
    labels = record.get("labels")
    if labels is None:  # pandas writes a missing list as null: no label, as []
        labels = []
    if isinstance(labels, str):
        labels = [n for n in _SEPARATORS.split(labels)]
    if not isinstance(labels, list) or not all(
            isinstance(n, (str, int)) and not isinstance(n, bool) for n in labels):
        raise DataFileError(f"{path}: {where}: 'labels' must be a list of class names, got "
                            f"{labels!r}")
    try:  # U+DC80..U+DCFF stand for bytes of a file name that is not UTF-8: those pass
        os.fsencode(image)
    except UnicodeEncodeError:
        raise DataFileError(f"{path}: {where}: the path {image!r} "
                            f"{not_utf8_problem(image)}, so it names no file: fix the "
                            f"path") from None
    labels = _names(labels)
    for name in labels:
        problem = not_utf8_problem(name)
        if problem:
            raise DataFileError(f"{path}: {where}: the class name {name!r} {problem}: fix "
                                f"the name")
    image_id = record.get("id")  # null or "" (a missing value): the path, as in CSV
    if isinstance(image_id, str) and not_utf8_problem(image_id):
        raise DataFileError(f"{path}: {where}: the id {image_id!r} "
                            f"{not_utf8_problem(image_id)}: fix the id")
    return where, image if image_id in (None, "") else str(image_id), image, labels

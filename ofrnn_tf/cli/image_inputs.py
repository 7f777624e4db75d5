"""The image files a command is given, and its report of what became of each.

Shared by ``ofrnn-predict`` (in process) and ``ofrnn-client`` (through a server): both
take files and folders, write one JSON line per input and account for every input,
so a file that cannot be read or decoded costs only its own line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Iterable, Iterator, NamedTuple, Optional, TextIO

from absl import app

from ofrnn_tf.cli.interrupts import deferred
from ofrnn_tf.features.pixel_limit import PIXEL_LIMIT_WORDS
from ofrnn_tf.status import say
from ofrnn_tf.text_bytes import marked_encoding, unmarked_wide_encoding

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif")
IMAGE_KINDS = "/".join(extension[1:] for extension in IMAGE_EXTENSIONS)  # for messages
FILES_FROM_HELP = ("Also take the files and folders this file lists, one a line, after those "
                   "given as arguments ('-': standard input, as from `find photos -type f "
                   "-iname '*.jpg' -print0`; NUL-separated where it holds a NUL byte, as "
                   "-print0 writes, which keeps a name holding a newline whole). The list "
                   "is read to its end before the first image.")


def given_inputs(arguments: list[str], files_from: str | None) -> list[str]:
    """The inputs a command is given: its `arguments`, then the paths the file
    ``--files_from`` names lists (one a line, or NUL-separated; empty lines, a line's
    ``\r`` and a UTF-8 byte-order mark dropped; names as the file system spells them, any
    bytes included; UTF-16 and UTF-32 refused). None at all is a usage error, before any
    work."""
    listed: list[str] = []
    if "-" in arguments:
        raise app.UsageError("an input '-' is not read as standard input: give "
                             "--files_from=- for a list of paths there, or /dev/stdin for "
                             "one image's bytes")
    if files_from:
        if files_from == "-" and sys.stdin is None:  # started with it closed
            raise app.UsageError("--files_from=-: standard input is closed")
        if files_from == "-" and sys.stdin.isatty():
            say("reading the inputs from standard input, one a line (end with Ctrl-D)")
        try:
            if files_from == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(files_from, "rb") as f:
                    data = f.read()
        except OSError as error:
            raise app.UsageError(f"--files_from={files_from}: "
                                 f"{error.strerror or error}") from None
        if marked_encoding(data) or unmarked_wide_encoding(data):
            raise app.UsageError(f"--files_from={files_from} is not UTF-8 text (UTF-16 or "
                                 f"UTF-32, by its bytes): save it as UTF-8, one path a line")
        data = data.removeprefix(b"\xef\xbb\xbf")  # UTF-8's mark, as Notepad writes it
        if b"\0" in data:
            names = data.split(b"\0")
        else:
            names = [n[:-1] if n.endswith(b"\r") else n for n in data.split(b"\n")]
        listed = [os.fsdecode(name) for name in names if name]
        if not listed and not arguments:
            raise app.UsageError(f"--files_from={files_from} lists no file")
    if not arguments and not listed:
        raise app.UsageError("give at least one image file or folder after the flags (or "
                             "--files_from=FILE)")
    return [*arguments, *listed]


def expand_inputs(arguments: list[str], report: str | None = None) -> list:
    """Each argument in order as image paths (folders expanded one level), or an error
    record for a folder without images and for every entry of a folder that is not an
    accepted image by its extension (a sub-folder included; a broken link stays a path,
    refused when read). A folder's hidden entries (``.DS_Store``, ``._photo.jpg``) are
    passed over: they are a file system's, not images; so is the command's own `report`
    (its ``--output``) found in a folder, which a rerun, or ``--resume``, would otherwise
    list among the inputs the first run did not have. A URL that is no file is an error
    record saying that it is not fetched, and a wildcard pattern that is no file (quoted,
    so the shell left it) one saying that it is not expanded."""
    own = file_id(report) if report and report != "-" else None
    entries: list = []
    for argument in arguments:
        if re.match(r"[a-z][a-z0-9+.-]*://", argument, re.I) and not os.path.exists(argument):
            entries.append({"image": argument, "error": f"{argument}: a URL, which is not "
                            f"fetched: download the image and give its file"})
            continue
        if re.search(r"[*?[]", argument) and not os.path.lexists(argument):
            entries.append({"image": argument, "error": f"{argument}: no such file; a pattern "
                            f"is not expanded here: leave it unquoted for the shell to expand, "
                            f"or list the files with --files_from"})
            continue
        if not os.path.isdir(argument):
            entries.append(argument)  # a missing or unreadable file becomes an error when read
            continue
        try:
            names = sorted(n for n in os.listdir(argument) if not n.startswith("."))
        except OSError as error:  # a folder this user may not read, or gone meanwhile
            entries.append({"image": argument, "error": f"{argument}: folder cannot be "
                            f"read ({error.strerror or error})"})
            continue
        # A set: a folder of 10^5 images would take minutes to look each name up in a list.
        images = {n for n in names if named_as_image(n)
                  and not os.path.isdir(os.path.join(argument, n))}
        if not images:
            entries.append({"image": argument, "error": f"{argument}: folder holds no "
                            f"{IMAGE_KINDS} file"})
        for name in names:
            path = os.path.join(argument, name)
            if own is not None and name not in images and file_id(path) == own:
                continue
            if name in images:
                entries.append(path)
            elif os.path.isdir(path):
                entries.append({"image": path, "error": f"{path}: skipped (a folder): folders "
                                "are read one level deep; name it to read it"})
            else:
                extension = os.path.splitext(name)[1]
                why = f"by its extension ({extension})" if extension else "(no extension)"
                entries.append({"image": path, "error": f"{path}: skipped {why}: accepted "
                                f"formats are JPEG, PNG, GIF and BMP"})
    return entries


def named_as_image(name: str) -> bool:
    """Whether a folder's entry is taken for an image by its name: of an accepted
    extension, in any case, and not hidden (``.DS_Store``, ``._photo.jpg`` are a file
    system's)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def entry_image(entry: str | dict) -> str:
    """The input an entry of `expand_inputs` names: its path, or its error record's
    ``image``."""
    return entry if isinstance(entry, str) else entry["image"]


def pixel_limit_remedied(results: Iterable[dict], remedy: str,
                         unless: str | None = None) -> Iterator[dict]:
    """`results`, each refusal of an image for a pixel limit told what to do about it
    (`remedy`), unless its error says `unless` already. Closed, it closes `results`."""
    results = iter(results)
    try:
        for result in results:
            error = result.get("error", "")
            if PIXEL_LIMIT_WORDS in error and (unless is None or unless not in error):
                result["error"] = error + remedy
            yield result
    finally:
        close_iterable(results)


def merge_results(entries: list, results: Iterable[dict]) -> Iterable[dict]:
    """`entries` in order, each path replaced by the next of `results` (one per path).
    `results` is then run to its end, so that what it holds open (a progress bar) is
    closed before the command's summary; where the report stops before its end (a full
    disk, Ctrl-C), this is closed, and so is `results`."""
    results = iter(results)
    try:
        for entry in entries:
            yield next(results) if isinstance(entry, str) else entry
        for extra in results:
            raise ValueError(f"a result for no input: {extra}")
    finally:
        close_iterable(results)


def close_iterable(results: Iterable) -> None:
    """Closes the generator `results` (other iterables have nothing to close), and a
    progress bar with what it counts: their progress bars are drawn a last time now, and
    what they hold open (a gRPC channel) let go, not when they are collected, which may
    come after the line that says why the command stopped. The generators the lines pass
    through close what they wrap in turn (`merge_results`, `pixel_limit_remedied`)."""
    close = getattr(results, "close", None)
    if close is not None:
        close()
    counted = getattr(results, "iterable", None)  # a progress bar's (tqdm's)
    if counted is not None:
        close_iterable(counted)


class ReportFile:
    """The ``--output`` file of a report, emptied when its first line is written (or when
    it is closed with none): a command refused before then (a run folder that is none, a
    server down) leaves an earlier report there as it was. Each line is written through
    at once; one a full disk cuts short is taken back out, so the file holds whole lines.
    `opened`: the stream of an ``--output`` that holds no report to keep (a pipe, a
    device), opened already. `keep`: bytes at the file's start that stay, the lines of an
    earlier run this one goes on from (what follows them, such as a line cut short, goes)."""

    def __init__(self, path: str, opened: TextIO | None = None, keep: int = 0):
        self.name = path
        self._stream = opened
        self._fd: int | None = None
        self._whole = keep  # bytes of the whole lines written
        self._closed = False

    def write(self, text: str) -> int:
        if self._stream is not None:
            with self._named():
                return self._stream.write(text)
        if self._fd is None:
            self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT, 0o666)
            os.ftruncate(self._fd, self._whole)
            os.lseek(self._fd, self._whole, os.SEEK_SET)
        data = text.encode("utf-8")
        with self._named():
            try:
                done = 0
                while done < len(data):
                    done += os.write(self._fd, data[done:])
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._whole)
                raise
        self._whole += len(data)
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            with self._named():
                self._stream.flush()

    @contextlib.contextmanager
    def _named(self):
        """Its OSErrors name the report (a write's, a device's and a pipe's name none)."""
        try:
            yield
        except OSError as error:
            error.filename = error.filename or self.name
            raise

    def close(self) -> None:
        if self._stream is None and self._fd is None and not self._closed:
            self.write("")  # a report of no line
        self.abandon()

    def abandon(self) -> None:
        """Closes the report of a command stopped before its end (a server down, Ctrl-C):
        an earlier report is kept where no line was written."""
        self._closed = True
        if self._stream is not None:
            self._stream.close()
        elif self._fd is not None:
            # Forgotten before it is closed: a second Ctrl-C between the two would have the
            # next close() close the number again, by then perhaps another file's.
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "ReportFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_report(output: str | None, inputs: Iterable[str] = (), keep: int = 0
                ) -> TextIO | ReportFile:
    """The stream a command's report goes to (stdout when `output` is None or ``-``),
    checked before any image is read, so that an unwritable ``--output`` costs nothing,
    and emptied only at the report's first line (`ReportFile`), but for the `keep` bytes
    at its start of a run it goes on from; an ``--output`` that is one of the `inputs` is
    refused (writing it would empty that image)."""
    if not output or output == "-":
        if sys.stdout is None:  # started with it closed
            raise app.UsageError("standard output is closed: give --output=FILE")
        return sys.stdout
    existed = os.path.exists(output)
    if existed and file_id(output) in file_ids(inputs):
        raise app.UsageError(f"--output={output} is one of the input images: writing the "
                             f"report there would empty it")
    try:
        if existed and not os.path.isfile(output):
            # A pipe or a device (/dev/stdout) holds no report to keep; a pipe opened
            # twice would lose its reader at the first close.
            return ReportFile(output, open(output, "w"))
        with open(output, "a"):  # can it be written? ("a" leaves what it holds)
            pass
    except OSError as error:
        raise app.UsageError(f"--output={output}: {error.strerror or error}") from None
    if not existed:
        # Made by the check (through a symbolic link, its target): a refused command
        # leaves no file behind.
        os.remove(os.path.realpath(output))
    return ReportFile(output, keep=keep)


def shows_progress(out: TextIO | ReportFile) -> bool:
    """Whether a command draws a progress bar while it writes its report to `out`: not
    when the report's lines go to a terminal, where they show the progress."""
    return out is not sys.stdout or not sys.stdout.isatty()


def file_id(path: str):
    """The device and inode of `path`'s file, which name it whatever the path (None where
    it cannot be looked at)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def file_ids(inputs: Iterable) -> set:
    """The `file_id` of each path among `inputs` (other entries, such as error records,
    and inputs that cannot be looked at, which are said when they are read, left out)."""
    return {file_id(entry) for entry in inputs if isinstance(entry, str)} - {None}


def write_report(results: Iterable[dict], out: TextIO | ReportFile, command: str,
                 verb: str, pictures_dir: Optional[str] = None,
                 progress: Optional["ReportProgress"] = None) -> int:
    """Writes one JSON line per result to `out` (from `open_report`) as each arrives, then
    names every failed input on stderr (and `pictures_dir`, where the results' attention
    pictures went) and returns the exit status: 1 only when no input at all succeeded. An
    exception from `results` propagates after the lines written so far are flushed and
    `results` is closed.
    `progress` counts each line once it is written; the lines a resumed report kept
    (`progress.kept`) are counted in the summary and the exit status, since they are the
    report's too (their failures were named by the run that wrote them)."""
    output = None if out is sys.stdout else out.name
    kept = progress.kept if progress is not None else KeptLines()
    num_ok, failed, pictures = kept.count - kept.failed, [], kept.pictures
    try:
        for result in results:
            # A line and its count, which says where --resume goes on from, together; not
            # on stdout, whose reader may stall a write, which Ctrl-C must still stop.
            with deferred(out is not sys.stdout):
                out.write(json.dumps(result, allow_nan=False) + "\n")
                out.flush()
                if progress is not None:
                    progress.written += 1
            if "error" in result:
                failed.append(result["error"])
            else:
                num_ok += 1
                pictures += "attention_png" in result
    except BaseException:
        if out is not sys.stdout:  # a full disk on stdout: `runner` names it
            out.abandon()
        close_iterable(results)
        raise
    if out is not sys.stdout:
        out.close()
    for error in failed:
        say(f"[{command}] {error}")
    say(f"[{command}] {num_ok} image(s) {verb}, {len(failed) + kept.failed} failed or skipped"
        + (f", {kept.count} of them on the lines --resume kept" if kept.count else "")
        + (f"; written to {output}" if output else "")
        + (f"; {pictures} attention picture(s) in {pictures_dir}" if pictures_dir else ""))
    return 0 if num_ok else 1


class ReportProgress:
    """How far a command's report has got through its `entries` (`written`: how many have
    their line in `output`, the lines a resumed report kept included), so that a command
    stopped midway (Ctrl-C, SIGTERM, a full disk, a server gone) can say which input to go
    on from, and how. One report a process: the newest made is `latest`, which the
    command's stop handlers read (`stopped_report`)."""

    latest: Optional["ReportProgress"] = None

    def __init__(self, entries: list, output: str | None,
                 kept: Optional["KeptLines"] = None):
        self.entries = entries
        self.output = output
        self.kept = kept or KeptLines()  # the lines a resumed report kept
        self.written = self.kept.count
        ReportProgress.latest = self

    @property
    def left(self) -> list:
        """The entries this run writes lines for: those after the lines kept."""
        return self.entries[self.kept.count:]

    @property
    def paths(self) -> list[str]:
        """The image files among `left`, which this run reads."""
        return [entry for entry in self.left if isinstance(entry, str)]

    def where(self, first_step: str = "") -> str:
        """`where_it_stopped` for the lines written so far."""
        return where_it_stopped(self.entries, self.written, self.output, first_step)


def resumable_report(entries: list, output: str | None, resume: bool, command: str,
                     fields: LineFields | None = None
                     ) -> tuple[TextIO | ReportFile, ReportProgress] | int:
    """The stream a command's report of `entries` goes to (`open_report`) and its progress,
    where ``--resume`` (`resume`) goes on from the lines a stopped run wrote, of the
    `fields` this run writes (`resumed_lines`). Where every input has its line already,
    having said so, the command's exit status: that of the report (`write_report`'s)."""
    kept = resumed_lines(output, entries, command, fields) if resume else KeptLines()
    name = command.removeprefix('ofrnn-')
    if entries and kept.count == len(entries):
        say(f"[{name}] every input already has its line in {output}: nothing to do")
        return 0 if kept.count > kept.failed else 1
    if resume:  # what it goes on from: a mistyped --output would start again unsaid
        first = entry_image(entries[kept.count])
        say(f"[{name}] --resume: {kept.count} of {len(entries)} input(s) have their line in "
            f"{output}" + ("" if os.path.exists(output) else " (no such file yet)")
            + f"; going on from {first}")
    out = open_report(output, [e for e in entries if isinstance(e, str)], keep=kept.size)
    return out, ReportProgress(entries, output, kept)


def stopped_report(first_step: str = "") -> str:
    """What a command stopped before its end says of its report: how many inputs have
    their line and how to go on (`first_step` first, such as freeing space); nothing
    where no line is written (a command stopped while it loads its model)."""
    progress = ReportProgress.latest
    if progress is None or not progress.written:
        return ""
    return progress.where(first_step)


def where_it_stopped(entries: list, written: int, output: str | None,
                     first_step: str = "") -> str:
    """How many of `entries` got their line (in `output`), and the first that did not,
    with how to go on (`first_step` first). With none written, `output` holds no line of
    this run (an earlier report stays as it was, which ``--resume`` would go on from, not
    this run's inputs): that is said, and the way on is the command again, once what
    stopped it (said before) is mended."""
    if written >= len(entries):
        return f"every input has its line in {output or 'the output'}"
    if not written:
        return "no input has its line yet" + (
            f", and {output} is as it was" if output and output != "-" else "")
    first = entry_image(entries[written])
    if output and output != "-":
        return (f"{written} of {len(entries)} input(s) have their line in {output}; the "
                f"first without one is {first}: {first_step}run the same command with "
                f"--resume to go on")
    return (f"{written} of {len(entries)} input(s) have their line; the first without one is "
            f"{first}: {first_step}give it and the inputs after it to go on")


class KeptLines(NamedTuple):
    """The lines of a stopped run's report that ``--resume`` keeps: how many (`count`, the
    first of the inputs), their bytes at the file's start (`size`), and how many of them
    are an input's `error` (`failed`) or name an attention picture (`pictures`)."""

    count: int = 0
    size: int = 0
    failed: int = 0
    pictures: int = 0


class LineFields(NamedTuple):
    """The fields besides ``image`` of a labelled line a command writes with its flags:
    `always` on every such line, `maybe` on some (an attention picture that could be
    drawn)."""

    always: frozenset
    maybe: frozenset = frozenset()


def resumed_lines(output: str | None, entries: list, command: str,
                  fields: LineFields | None = None) -> KeptLines:
    """For ``--resume``: the lines of `entries` that already have their line in `output`
    (the first ones, in order, as a stopped run of `command` wrote them), which stay; a
    line cut short at its end (a run killed while writing it) goes. A usage error when
    `output` is no file, or holds lines for other inputs, or (where `fields` is given)
    labelled lines of other fields: another command's report (``ofrnn-predict``'s has
    ``step_probabilities``, ``ofrnn-client``'s ``model_version``) or one of other flags,
    which would be mixed with this run's lines."""
    if not output or output == "-":
        raise app.UsageError("--resume goes on from the lines of --output: give the file the "
                             "stopped run wrote")
    if not os.path.exists(output):
        return KeptLines()
    if not os.path.isfile(output):
        raise app.UsageError(f"--resume: --output={output} is not a file, which a stopped run "
                             f"would have written")
    try:
        with open(output, "rb") as f:
            # Counted, then read, a line at a time: a report of 10^5 lines of --all_scores
            # is gigabytes, which read whole were held twice.
            count = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
            if count > len(entries):
                raise app.UsageError(
                    f"--resume: {output} holds {count} lines, more than the {len(entries)} "
                    f"inputs given: give the inputs of the run that wrote it, or another "
                    f"--output")
            f.seek(0)
            # The whole lines: after them, a line cut short goes.
            return _kept_lines((f.readline() for _ in range(count)), output, entries,
                               command, fields)
    except OSError as error:
        raise app.UsageError(f"--output={output}: {error.strerror or error}") from None


def _kept_lines(lines: Iterable[bytes], output: str, entries: list, command: str,
                fields: LineFields | None) -> KeptLines:
    """`resumed_lines` of the whole `lines` of `output`, each ending in its newline."""
    kept = failed = pictures = size = 0
    for number, (line, entry) in enumerate(zip(lines, entries), 1):
        kept, size = number, size + len(line)
        expected = entry_image(entry)
        try:
            record = json.loads(line)
            image = record["image"]
        except (ValueError, TypeError, KeyError):
            raise app.UsageError(f"--resume: {output}, line {number}, is not a line of "
                                 f"{command}'s: give its report, or another --output"
                                 ) from None
        if image != expected:
            raise app.UsageError(other_inputs(output, number, image, expected, entries))
        if fields is not None and "error" not in record:
            refuse_other_fields(record, fields, output, number, command)
        failed += "error" in record
        pictures += "attention_png" in record
    return KeptLines(kept, size, failed, pictures)


def refuse_other_fields(record: dict, fields: LineFields, output: str, number: int,
                        command: str) -> None:
    """A usage error where the labelled line `record` (line `number` of `output`) holds
    other fields than this `command` writes with its flags (`fields`)."""
    present = set(record) - {"image"}
    extra = sorted(present - fields.always - fields.maybe)
    missing = sorted(fields.always - present)
    if not extra and not missing:
        return
    said = " and ".join(([f"has {', '.join(extra)}"] if extra else [])
                        + ([f"has no {', '.join(missing)}"] if missing else []))
    flag = "; --all_scores writes all_scores" if "all_scores" in extra + missing else ""
    raise app.UsageError(f"--resume: {output}, line {number}, is not a line this {command} "
                         f"writes (it {said}{flag}): give the command and flags of the run "
                         f"that wrote it, or another --output")


def other_inputs(output: str, number: int, image: str, expected: str, entries: list) -> str:
    """Why line `number` of `output`, for `image`, is not the line of input `number`
    (`expected`): its image is no input now (gone from a folder given, or left out), or
    another input comes first (a file added to a folder, or the inputs in another order).
    A folder given whose files changed is the same argument, so that is said."""
    images = {entry_image(entry) for entry in entries}
    if image not in images:
        why = "which is not among the inputs given (gone from its folder since, or left out)"
    else:
        why = (f"where input {number} is {expected} (added to its folder since, or the "
               f"inputs are in another order)")
    return (f"--resume: {output}, line {number}, is for {image}, {why}: give the inputs of "
            f"the run that wrote it, in the same order, with the files its folders held, or "
            f"another --output")

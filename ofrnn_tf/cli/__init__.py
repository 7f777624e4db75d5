"""The command-line entry points (console scripts of the package; thin absl layers).

Importing it before TensorFlow keeps TensorFlow's C++ INFO and WARNING lines (CUDA
probes, oneDNN notes, "Not handling type DT_INT64" of every served request's set-up)
out of the commands' progress (``TF_CPP_MIN_LOG_LEVEL=2``) unless the environment
already says otherwise."""

import codecs
import contextlib
import errno
import io
import logging as std_logging
import os
import signal
import stat
import sys
import tempfile
from typing import Callable, Iterator, Optional, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402 - after the log level, which TensorFlow reads once

from ofrnn_tf import host_limits  # noqa: E402 - imports no TensorFlow
from ofrnn_tf.config.experiment import MAX_BEAM_SIZE  # noqa: E402 - imports no TensorFlow
from ofrnn_tf.jsonio import DISK_FULL, out_of_room  # noqa: E402 - imports no TensorFlow
from ofrnn_tf.status import printable, say  # noqa: E402 - imports no TensorFlow
from ofrnn_tf.tf_errors import op_error_text  # noqa: E402 - imports no TensorFlow
from ofrnn_tf.cli import interrupts  # noqa: E402 - imports no TensorFlow


HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml")


def help_exits_zero() -> None:
    """Make absl's help flags (``--help``, ``-?``, ``--helpshort``, ``--helpfull``,
    ``--helpxml``) end the command with 0: absl exits with 1 after printing the help, the
    status of a refused command, so a script that asks for the flags would see a failure.
    A flag absl cannot parse still exits with 1. Idempotent; before `app.run`."""
    app.define_help_flags()
    for name in HELP_FLAGS:
        flag = flags.FLAGS[name]
        if getattr(flag.parse, "exits_zero", False):
            continue

        def parse(argument, printed_help=flag.parse):
            try:
                printed_help(argument)
            except SystemExit as exit_:
                raise SystemExit(0 if exit_.code == 1 else exit_.code) from None

        parse.exits_zero = True
        flag.parse = parse


def runner(define_flags, main, on_interrupt: Union[str, Callable[[], str]] = "",
           on_disk_full: Callable[[], Optional[str]] = lambda: None):
    """A console script's entry: define the command's flags (only when it runs, so importing
    a command module defines none), then run `main` under absl.

    absl's ``--help`` lists the key flags of the module named by ``sys.argv[0]`` under
    ``__main__``'s docstring; the flags here are defined in the command's module, and a
    console-script wrapper has no docstring (a shim such as ``predict.py`` one line), so
    both are handed over to the script; the help exits with 0 (`help_exits_zero`). A
    `app.UsageError` from `main` prints its message and a pointer to ``--help``, not the
    whole listing. A flag given as ``~/…`` (which a shell leaves unexpanded after ``=``) is
    expanded as the shell would, so that no folder named ``~`` is made (`expanded_home`:
    refused where it cannot be). Ctrl-C prints
    ``interrupted`` and `on_interrupt` (what a rerun does; a function, called then, where
    that depends on how far the command got)
    instead of a traceback, and exits with 130, as a shell reports SIGINT; SIGTERM (from
    ``kill``, ``timeout``, ``docker stop``) takes the same way out, printing
    ``terminated`` and exiting with 143, so the command's own clean-up runs; a full disk
    (`disk_full`) says what it stopped writing (a write to stdout names "the standard
    output": `_StandardOutput`) and that a rerun keeps what is finished, or what
    `on_disk_full` says instead (where the work is done and a rerun would do it again),
    and exits with 1. A reader of stdout that goes away ends the command quietly, with
    141, as SIGPIPE would. Under a CPU quota below the cores the process sees, TensorFlow's
    thread pools are sized to the quota before it starts, in one line that says so
    (`_threads_within_cpu_quota`)."""
    threads_note = None  # what `_threads_within_cpu_quota` set, said once the flags parse

    def usage_errors_in_one_line(argv):
        command = os.path.basename(sys.argv[0])
        if threads_note:
            say(f"{command}: {threads_note}")
        # TensorFlow imported before absl set up logging gave its logger a handler of
        # its own: absl's prints every record as well, so each would appear twice.
        std_logging.getLogger("tensorflow").handlers.clear()
        interrupts.install()
        try:
            for name in flags.FLAGS:
                flag = flags.FLAGS[name]
                if flag.present and isinstance(flag.value, str) and flag.value.startswith("~"):
                    flag.value = expanded_home(name, flag.value)
            with _standard_output_named():
                status = main(argv)
                if sys.stdout is not None:
                    sys.stdout.flush()  # its last lines: a full disk is said here, not at exit
            return status
        except app.UsageError as error:
            pointer = "" if isinstance(error, InputFileError) else (
                "\nTry --help for the command's flags.")
            print(f"{command}: {printable(error)}{pointer}", file=sys.stderr)
            return error.exitcode
        except (KeyboardInterrupt, SystemError) as error:
            # A Ctrl-C that lands while TensorFlow's C++ code calls back into Python can
            # come out as a SystemError ("bad argument to internal function").
            if isinstance(error, SystemError) and interrupts.received() is None:
                raise
            said, code = interrupts.ended_by()
            rerun = on_interrupt() if callable(on_interrupt) else on_interrupt
            print(f"\n{command}: {said}{'; ' + rerun if rerun else ''}",
                  file=sys.stderr)
            return code
        except Exception as error:
            full = disk_full(error)
            if full is None:
                raise
            done = on_disk_full()
            print(f"{command}: {full}; {done}" if done else
                  f"{command}: {full}. Free space and rerun the same command: what it "
                  f"finished before is kept.", file=sys.stderr)
            return 1

    def run():
        nonlocal threads_note
        _in_utf8_mode()
        threads_note = _threads_within_cpu_quota()
        _matplotlib_folder_writable()
        _refuse_flags_not_utf8()
        # Help texts and messages say τ and ×: on a stdout that cannot hold them (an ASCII
        # or Latin-1 PYTHONIOENCODING), escaped, not a UnicodeEncodeError.
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"  # closed: None
        if not _is_utf8(encoding) and hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors="backslashreplace")
        before = set(flags.FLAGS)
        define_flags()
        for name in sorted(set(flags.FLAGS) - before):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
        sys.modules["__main__"].__doc__ = sys.modules[main.__module__].__doc__
        help_exits_zero()
        try:
            app.run(usage_errors_in_one_line)
        except BrokenPipeError:
            # stdout's reader is gone (`ofrnn-predict … | head`, `--help | less` quit):
            # end quietly, as a command that SIGPIPE ends would, without a traceback or
            # Python's second failure flushing stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)

    return run


# TensorFlow's thread pools: each sized from the environment variable where it is set
# (read when TensorFlow starts running ops), else from the cores the process may run on.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _threads_within_cpu_quota() -> Optional[str]:
    """Sizes TensorFlow's thread pools to the CPUs this process may use
    (`host_limits.usable_cpus`) where a CPU quota (``docker --cpus``, Kubernetes
    ``limits.cpu``) leaves fewer than the cores it sees, which is what TensorFlow counts:
    pools of the cores' size on a fraction of their time halved a server's throughput.
    Sets the `THREAD_VARIABLES` not set already (so the programs the command starts, a
    server, inherit them) and returns the line that says so; None, changing nothing,
    where no quota is below the cores."""
    unset = [name for name in THREAD_VARIABLES if not os.environ.get(name)]
    if not unset:
        return None
    usable, visible = host_limits.usable_cpus(), host_limits.visible_cpus()
    if usable >= visible:
        return None
    for name in unset:
        os.environ[name] = str(usable)
    quota = host_limits.cpu_quota()
    return (f"a CPU quota of {quota:g} lets this process use {usable} of the {visible} cores "
            f"it sees: TensorFlow's thread pools are sized to {usable} "
            f"({' '.join(f'{name}={usable}' for name in unset)}; set them to choose)")


# The file `disk_full` names for a write to stdout that a full disk stopped.
STANDARD_OUTPUT = "the standard output"


class _StandardOutput(io.TextIOWrapper):
    """``sys.stdout`` while a command runs (`_standard_output_named`): a write or flush a
    full disk stops names `STANDARD_OUTPUT` as its file, which the error of a write to an
    open file does not name, so that `disk_full` can say which write it was."""

    def write(self, text: str) -> int:
        with _naming_standard_output():
            return super().write(text)

    def flush(self) -> None:
        with _naming_standard_output():
            super().flush()


@contextlib.contextmanager
def _naming_standard_output() -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if out_of_room(error) and not error.filename:
            error.filename = STANDARD_OUTPUT
        raise


@contextlib.contextmanager
def _standard_output_named() -> Iterator[None]:
    """Makes ``sys.stdout`` a `_StandardOutput` over the same file for the block, where it
    is the process's own (not one a test or a caller put in its place); back after."""
    given = sys.stdout
    if given is None or given is not sys.__stdout__ or not isinstance(given, io.TextIOWrapper):
        yield
        return
    given.flush()
    named = _StandardOutput(given.buffer, encoding=given.encoding, errors=given.errors,
                            line_buffering=given.line_buffering,
                            write_through=given.write_through)
    sys.stdout = named
    try:
        yield
    finally:
        sys.stdout = given
        try:
            named.flush()
        except OSError:
            # What a full disk left unwritten (the command says so) is dropped: every later
            # flush, at exit too, would fail on it again, with a message and status of its own.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, named.fileno())
            os.close(devnull)
            named.flush()
        named.detach()  # the file stays open: it is the process's stdout


def expanded_home(flag: str, value: str) -> str:
    """`value` (of ``--<flag>``) with its leading ``~`` or ``~user`` expanded as a shell
    would; a usage error where it cannot be (no HOME and no passwd entry for this uid, as
    in a container run under an arbitrary uid; no such user), rather than a folder named
    ``~`` made in the working folder."""
    expanded = os.path.expanduser(value)
    if not expanded.startswith("~"):
        return expanded
    user = value[1:].split("/", 1)[0]
    why = (f"no user named {user!r}" if user else
           f"no HOME and no passwd entry for uid {os.getuid()}")
    raise app.UsageError(f"--{flag}={value}: '~' cannot be expanded ({why}): give the path "
                         f"in full")


def _is_utf8(encoding: str) -> bool:
    """Whether `encoding` names UTF-8, however spelt (``UTF8``, ``utf_8``)."""
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _in_utf8_mode() -> None:
    """Starts the command again in Python's UTF-8 mode where file names are not read and
    written as UTF-8 (a Latin-1 or ASCII locale): TensorFlow's file functions take them
    as UTF-8 always, and a non-ASCII path would name one file to Python, another to
    TensorFlow (a run's checkpoints apart from its run.json, weights that are there
    called missing).

    Started with ``-X utf8``, which Python honours under ``-I`` and ``-E`` too (they make
    it ignore ``PYTHONUTF8``); ``PYTHONUTF8=1`` is set as well, for the Python programs
    the command starts."""
    if _is_utf8(sys.getfilesystemencoding()) or sys.flags.utf8_mode:
        return
    if sys.orig_argv[1:3] == ["-X", "utf8"]:  # started again, turned off after: as asked
        return
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if sys.flags.interactive or not main_file or sys.orig_argv[1:2] == ["-"]:
        return  # a session, or a program read from standard input: nothing to start again
    os.environ["PYTHONUTF8"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])


def _matplotlib_folder_writable() -> None:
    """Points ``MPLCONFIGDIR`` at a folder of this user's under the temporary folder where
    matplotlib's own cannot be written (on Linux ``~/.config/matplotlib`` and
    ``~/.cache/matplotlib``, or under the ``XDG_*`` folders; on macOS ``~/.matplotlib``):
    no HOME, or one this user may not write (a service user, a container's arbitrary
    uid). Keras imports matplotlib with TensorFlow, and matplotlib would otherwise print
    warnings before every command's first line and build its font cache again each
    time. A folder of that name that is not this user's own (another user made it
    first) is not used."""
    if os.environ.get("MPLCONFIGDIR") or os.name != "posix":
        return
    home = os.path.expanduser("~")
    if sys.platform.startswith(("linux", "freebsd")):
        defaults = [os.path.join(os.environ.get(variable) or os.path.join(home, fallback),
                                 "matplotlib")
                    for variable, fallback in (("XDG_CONFIG_HOME", ".config"),
                                               ("XDG_CACHE_HOME", ".cache"))]
    else:  # macOS: one folder for both
        defaults = [os.path.join(home, ".matplotlib")]
    if not home.startswith("~") and all(map(_can_be_written, defaults)):
        return
    try:
        folder = os.path.join(tempfile.gettempdir(), f"ofrnn_tf-matplotlib-{os.getuid()}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        made = os.lstat(folder)
    except OSError:  # no usable temporary folder: TensorFlow says so on import
        return
    if stat.S_ISDIR(made.st_mode) and made.st_uid == os.getuid():
        os.environ["MPLCONFIGDIR"] = folder


def _can_be_written(folder: str) -> bool:
    """Whether `folder` is one this user may write into, or may make (the nearest folder
    on its way that exists is writable)."""
    probe = os.path.abspath(folder)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    return os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)


def _refuse_flags_not_utf8() -> None:
    """Ends the command in one line where a flag's value holds bytes that are not UTF-8
    (a path typed on a Latin-1 terminal): TensorFlow, which opens the run's files, could
    not name it. Inputs given as arguments are read by Python and keep such names."""
    for arg in sys.argv[1:]:
        if not (arg.startswith("-") and "=" in arg):
            continue
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            name, value = arg.split("=", 1)
            raise SystemExit(
                f"{os.path.basename(sys.argv[0])}: {name}={printable(value)}: not UTF-8 (a "
                f"name in another encoding, such as Latin-1): TensorFlow reads file names as "
                f"UTF-8; give it in UTF-8") from None


def disk_full(error: BaseException) -> Optional[str]:
    """What a full disk (or quota) stopped writing, when `error` is that failure or arose
    while handling it (an error handler's own write failing too); None otherwise. Of
    several such failures in the chain, the first is named: the write that stopped the
    command."""
    seen, first = set(), None
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if out_of_room(error):
            # A copy's error names its source first, and the file it wrote second.
            where = error.filename2 or error.filename
            first = DISK_FULL[error.errno] + (f" writing {where}" if where else "")
        elif type(error).__module__.startswith("tensorflow"):
            text = op_error_text(error)
            if any(reason in text for reason in DISK_FULL.values()):
                first = text
        error = error.__cause__ or error.__context__
    return first


def usable_config(make_config):
    """The config `make_config` builds; settings that do not go together (its ValueError)
    are the command line's fault, so a usage error."""
    try:
        return make_config()
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def refuse_unservable_version() -> None:
    """A usage error when the command's ``--version`` is set outside 0..2**63-1: TF
    Serving loads only version folders named by integers that fit an int64."""
    from ofrnn_tf.serving.server_process import servable_version  # imports no TensorFlow

    if flags.FLAGS.version is not None:
        try:
            servable_version(flags.FLAGS.version)
        except ValueError as error:
            raise app.UsageError(f"--{error}") from None


def refuse_below(flag: str, minimum: int = 1, note: str = "") -> None:
    """A usage error when the command's ``--<flag>`` is set below `minimum` (`note`
    follows the bound: " (1: greedy)")."""
    value = flags.FLAGS[flag].value
    if value is not None and value < minimum:
        bound = "0 or more" if minimum == 0 else f"at least {minimum}"
        raise app.UsageError(f"--{flag} must be {bound}{note}, got {value}")


def refuse_beam_size() -> None:
    """A usage error when the command's ``--beam_size`` is below 1 or above
    `MAX_BEAM_SIZE`, before any run is read (the run's data bound it further:
    `InferenceModule.from_run`)."""
    refuse_below("beam_size", note=" (1: greedy)")
    value = flags.FLAGS["beam_size"].value
    if value is not None and value > MAX_BEAM_SIZE:
        raise app.UsageError(f"--beam_size must be at most {MAX_BEAM_SIZE} (every image decodes "
                             f"its K beams at once), got {value}")


def refuse_non_probability(flag: str, *aliases: str) -> None:
    """A usage error when the command's ``--<flag>`` is set outside [0, 1] (or to NaN),
    naming the flag as it was given: `flag`, or the one of its `aliases` typed."""
    value = flags.FLAGS[flag].value
    if value is not None and not 0.0 <= value <= 1.0:
        given = next((alias for alias in aliases if flags.FLAGS[alias].present), flag)
        raise app.UsageError(f"--{given} must be a probability in [0, 1], got {value}")


def refuse_unwritable_folder(flag: str, path: str) -> None:
    """Refuses, before any work, a folder flag under which nothing can be made: a file on
    its way, a dangling symbolic link, a read-only or forbidden folder (the nearest one
    that exists is what a command would write into)."""
    given = probe = os.path.abspath(path)
    while True:
        where = f"--{flag}={path}" + ("" if probe == given else f": {probe}")
        if os.path.islink(probe) and not os.path.exists(probe):
            raise InputFileError(f"{where} is a symbolic link to {os.readlink(probe)}, which "
                                 f"does not exist")
        if os.path.exists(probe):
            break
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputFileError(f"{where} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        # The folder on the way that is missing, where it is not the one given.
        missing = os.path.join(probe, os.path.relpath(given, probe).split(os.sep)[0])
        made = ("" if probe == given or missing == given else
                f" to make {missing}, which does not exist")
        raise InputFileError(f"{where} cannot be written ({_unwritable_reason(probe)}){made}")


def _unwritable_reason(folder: str) -> str:
    """Why this user cannot write into `folder`, which exists: a read-only file system (a
    read-only mount or volume), or its permissions."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


@contextlib.contextmanager
def refusing_cache_writes(cache_dir: str) -> Iterator[None]:
    """Says a failure to write under ``--runtime.cache_dir`` (read-only, a file on its way,
    a dangling link) in one line (`cache_write_refusal`); other errors pass."""
    try:
        yield
    except OSError as error:
        refused = cache_write_refusal(error, cache_dir)
        if refused is None:
            raise
        raise refused from None


def cache_write_refusal(error: OSError, cache_dir: str) -> Optional[app.UsageError]:
    """The one-line refusal of a failure to write under ``--runtime.cache_dir``, or None
    for any other error. A full disk is said by `runner`. A read-only cache that holds
    what a run needs is only read, so the flag cannot be refused before the write."""
    if out_of_room(error) or not error.filename:
        return None
    cache = os.path.abspath(cache_dir)
    written = os.path.abspath(os.fsdecode(error.filename))
    if written != cache and not written.startswith(cache + os.sep):
        return None
    return InputFileError(f"--runtime.cache_dir={cache_dir}: {written} cannot be written "
                          f"({error.strerror}); give a writable folder")


def refuse_glob_characters(flag: str, path: str, absolute: bool = False) -> None:
    """A usage error when `path` (the value of ``--<flag>``; with `absolute`, its absolute
    form, as TensorFlow Serving is given a model's base path) holds a '['.

    TensorFlow looks a checkpoint's files up by glob pattern (``GetMatchingPaths``, for
    `tf.train.latest_checkpoint`, the checkpoint reader and a SavedModel's variables),
    where '[' opens a character class, so it finds none of them. Escaping the '[' does
    not help: the readers then open the files by the escaped name.
    """
    shown = os.path.abspath(path) if absolute else path
    if "[" in shown:
        where = "" if "[" in path else f" (absolute path {shown})"
        raise app.UsageError(
            f"--{flag}={path}{where} contains '[': TensorFlow reads checkpoint paths as glob "
            f"patterns and cannot find the files under it; rename the folder without '['")


def refuse_missing_run_folder(workdir: str) -> None:
    """A usage error when `workdir`, given as a run folder to read, is no folder at all: a
    mistyped ``--workdir`` is said at once, not after TensorFlow's seconds of import
    (`RunDir.require` says the same of a folder that holds no run)."""
    try:
        if stat.S_ISDIR(os.stat(workdir).st_mode):
            return
        what = "not a folder"
    except NotADirectoryError:  # a file on its way (`notes.txt/run`, `notes.txt/`)
        what = "not a folder"
    except FileNotFoundError:
        what = ("a symbolic link to a path that does not exist" if os.path.islink(workdir)
                else "no such folder")
    except PermissionError:  # a folder on the way this user may not look into: `RunDir`
        return               # says so
    except OSError as error:  # a loop of symbolic links, a name too long
        what = error.strerror or str(error)
    raise app.UsageError(f"{workdir} is not a run folder ({what}): pass the --workdir of a "
                         f"training run")


def trained_run(workdir: str, beam_size: Optional[int] = None):
    """The `RunDir` of `workdir`, which must be a run folder with a checkpoint that reads
    back and a label map that agrees with its ``run.json``, and, where a `beam_size` is
    asked for, a run with a beam (not the baseline): a usage error otherwise, before any
    model is built."""
    refuse_missing_run_folder(workdir)
    import tensorflow as tf

    from ofrnn_tf.run_dir import RunDir, RunInUseError  # deferred: these import TensorFlow
    from ofrnn_tf.training.run_state import training_state

    refuse_glob_characters("workdir", workdir)
    run_dir = RunDir(workdir)
    try:
        run_dir.require().check_not_in_use()
        weights = run_dir.weights_path()
        run_dir.label_map()
        config = run_dir.load()[0]
    except (FileNotFoundError, RunInUseError, *input_errors()) as error:
        raise refusal(error) from None
    if beam_size is not None and config.model.variant == "baseline":
        raise app.UsageError(f"--beam_size={beam_size}: {workdir} is a baseline run (M_map "
                             f"alone), which has no beam: its labels are the classes above τ")
    try:
        stopped = training_state(run_dir, config)
    except (ValueError, OSError, tf.errors.OpError):
        # Never trained through its last stage (refused, saying so, where it has no τ) or
        # checkpoints that say nothing of it: no note.
        stopped = None
    if stopped:
        say(f"{os.path.basename(sys.argv[0])}: WARNING: {run_dir.path} is not finished "
            f"(stopped at {stopped}): its best epoch so far is used")
    if os.path.dirname(os.path.abspath(weights)) != os.path.abspath(run_dir.best_dir()):
        say(f"{os.path.basename(sys.argv[0])}: {run_dir.best_dir()} holds no checkpoint: the "
            f"newest training checkpoint, {os.path.basename(weights)}, is used (with the τ "
            f"calibrated for it, if any)")
    return run_dir


class InputFileError(app.UsageError):
    """A usage error whose remedy is not in the command's flags but in a file it read (a
    data file, a feature shard, a run folder's checkpoint or label map) or in the run
    folder's state (held by another command, trained with other settings): said without
    the pointer to ``--help``."""


def refusal(error: Exception) -> app.UsageError:
    """The usage error that says one of `input_errors()` in one line."""
    from ofrnn_tf.checkpoint_files import DamagedCheckpointError
    from ofrnn_tf.data import DataFileError
    from ofrnn_tf.data.fashion_mnist import BenchmarkSourceError
    from ofrnn_tf.data.splits import SplitEmptiedError
    from ofrnn_tf.features.backbones import BackboneWeightsUnavailableError
    from ofrnn_tf.features.shard_checks import CorruptShardError
    from ofrnn_tf.features.shard_meta import FeatureCacheDamagedError
    from ofrnn_tf.labels import LabelMapMismatchError
    from ofrnn_tf.run_dir import (DamagedRunFileError, IncompatibleRunError,
                                  RunFolderNotReadableError, RunFolderNotWritableError,
                                  RunInUseError)
    from ofrnn_tf.training.run_state import UnfinishedRunError
    from ofrnn_tf.training.trainer import NonFiniteLossError

    not_the_flags = (DataFileError, SplitEmptiedError, CorruptShardError,
                     FeatureCacheDamagedError, LabelMapMismatchError, DamagedCheckpointError,
                     DamagedRunFileError, RunInUseError, IncompatibleRunError,
                     RunFolderNotReadableError, RunFolderNotWritableError, UnfinishedRunError,
                     NonFiniteLossError, BackboneWeightsUnavailableError, BenchmarkSourceError)
    return (InputFileError if isinstance(error, not_the_flags) else app.UsageError)(str(error))


def input_errors() -> tuple[type, ...]:
    """The errors that are the input's fault (the data's files, the flags' split sizes, a
    feature cache, backbone or weights they point at, a run folder's damaged checkpoint or
    weights that do not fit the code's model, edited label map, damaged JSON file or files
    this user may not read, a multi-worker cluster's TF_CONFIG or a batch its replicas
    cannot share): a command says them in one line, as usage errors; any other error
    keeps its traceback."""
    # deferred: most of these modules import TensorFlow
    from ofrnn_tf.checkpoint_files import DamagedCheckpointError
    from ofrnn_tf.data import DataFileError, DataNotFoundError
    from ofrnn_tf.data.splits import SplitTooSmallError
    from ofrnn_tf.features.backbones import BackboneWeightsUnavailableError, UnknownBackboneError
    from ofrnn_tf.features.cache import FeatureCacheMismatchError, FeatureCacheNotFoundError
    from ofrnn_tf.features.extract import FeatureFolderMismatchError, UnsafeFeatureFolderError
    from ofrnn_tf.features.shard_checks import CorruptShardError
    from ofrnn_tf.features.shard_meta import FeatureCacheDamagedError
    from ofrnn_tf.labels import LabelMapMismatchError
    from ofrnn_tf.run_dir import (DamagedRunFileError, IncompatibleRunError,
                                  RunFolderNotReadableError)
    from ofrnn_tf.training.distribute import BatchSplitError, ClusterConfigError

    return (DataNotFoundError, DataFileError, SplitTooSmallError, FeatureCacheNotFoundError,
            FeatureCacheMismatchError, FeatureFolderMismatchError, UnsafeFeatureFolderError,
            FeatureCacheDamagedError, CorruptShardError, BackboneWeightsUnavailableError,
            UnknownBackboneError, LabelMapMismatchError, DamagedCheckpointError,
            IncompatibleRunError, DamagedRunFileError, RunFolderNotReadableError,
            ClusterConfigError, BatchSplitError)

"""ofrnn-export: a finished run as a SavedModel for TensorFlow Serving.

    ofrnn-export --workdir=runs/order_free --export_dir=exports/ofrnn

writes ``exports/ofrnn/<version>/`` (the next free integer unless --version is given)
with the ``serving_default`` (image bytes), ``predict_with_threshold`` (image bytes and
a τ per image) and ``predict_features`` signatures, the calibrated τ, K and T_max
inside (a line says which τ and K), and ``assets.extra/tf_serving_warmup_requests``. The
warm-up images are checked first, by the model's image checks as ``ofrnn-predict`` runs
them: one of ``--warmup_images`` that the model refuses stops the export, naming the file
and why; one of the run's example images (the default) is left out with a note.
Inspect it with ``saved_model_cli show --all --dir exports/ofrnn/1``.
"""

import glob
import os
import shlex
import stat
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from ofrnn_tf.cli import (input_errors, refusal, refuse_beam_size, refuse_below,
                          refuse_glob_characters, refuse_unservable_version,
                          refuse_unwritable_folder, runner, trained_run)
from ofrnn_tf.cli.image_inputs import IMAGE_KINDS, named_as_image
from ofrnn_tf.export.warmup import DEFAULT_NUM_WARMUP_IMAGES
from ofrnn_tf.features.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, PIXEL_LIMIT_WORDS
from ofrnn_tf.serving.server_process import (
    DEFAULT_MODEL_NAME, open_to_others_command, refuse_taken_version, refuse_version_folder,
    unreadable_part, version_folders)
from ofrnn_tf.status import say

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "A finished training run folder.")
    flags.DEFINE_string("export_dir", None, "Model base path: versions go in numbered sub-folders.")
    flags.DEFINE_integer("version", None, "Version number (default: the next free one).")
    flags.DEFINE_integer("beam_size", None, "Beam width K (default: the run's; another K must "
                         "have been calibrated: ofrnn-train --mode=eval --decoding.beam_size=K).")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS,
                         "Images whose header declares more pixels are refused unread.")
    flags.DEFINE_string("warmup_images", None, "Images for the warm-up requests: a folder "
                        "(its image files), a file, or a glob such as 'photos/*.jpg' "
                        "(default: the run's example images).")
    flags.DEFINE_integer("num_warmup_images", DEFAULT_NUM_WARMUP_IMAGES,
                         "At most this many warm-up images (0: a gray square stands for them).")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the beam search. TensorFlow Serving runs "
                      "XLA only with its experimental --xla_cpu_compilation_enabled / "
                      "--xla_gpu_compilation_enabled flag: leave off for a portable export.")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME,
                        "Model name written into the warm-up requests.")
    flags.DEFINE_integer("keep_versions", 0, "Once exported, remove the version folders of "
                         "--export_dir but this many highest ones and the one written (0: "
                         "keep every version). TF Serving serves the highest by default.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir or not FLAGS.export_dir:
        raise app.UsageError("--workdir and --export_dir are required")
    refuse_unservable_version()
    refuse_below("max_image_pixels")
    refuse_beam_size()
    refuse_below("num_warmup_images", minimum=0)
    refuse_below("keep_versions", minimum=0)
    refuse_unwritable_folder("export_dir", FLAGS.export_dir)  # before the model is built
    try:  # before TensorFlow is imported; `export_run` refuses it too
        refuse_version_folder(FLAGS.export_dir)
    except ValueError as error:
        raise app.UsageError(f"--export_dir={error}") from None
    if FLAGS.version is not None:  # likewise
        try:
            refuse_taken_version(os.path.join(FLAGS.export_dir, str(FLAGS.version)))
        except FileExistsError as error:
            raise app.UsageError(f"{error} (--version)") from None
    refuse_glob_characters("workdir", FLAGS.workdir)
    # TensorFlow Serving is given the absolute base path, and reads the variables by it.
    refuse_glob_characters("export_dir", FLAGS.export_dir, absolute=True)
    if not FLAGS["verbosity"].present:  # one given (absl's flag) is the user's
        logging.set_verbosity(logging.WARNING)  # TensorFlow's notes on every function it saves
    run_dir = trained_run(FLAGS.workdir, FLAGS.beam_size)
    # Here, after the flags are checked: TensorFlow takes seconds to import.
    from ofrnn_tf.export.saved_model import WarmupImageError, export_run, remove_old_versions
    from ofrnn_tf.inference.module import BeamSizeError, UncalibratedBeamSizeError

    paths, images = [], None  # None: the run's example images
    if FLAGS.warmup_images:
        paths = _given_warmup_images(FLAGS.warmup_images, FLAGS.num_warmup_images)
        images = [_read_warmup_image(p) for p in paths]
    say(f"[export] {run_dir.path} into {FLAGS.export_dir}: building the model, tracing and "
        f"saving its signatures, checking the warm-up requests (seconds to a minute)")
    started = time.perf_counter()
    rule = []  # the version's decision rule, once its module is built
    try:
        path = export_run(run_dir, FLAGS.export_dir, version=FLAGS.version,
                          on_module=lambda module: rule.append(module.decision_rule()),
                          warmup_images=images, num_warmup_images=FLAGS.num_warmup_images,
                          on_refused=_say_left_out, model_name=FLAGS.model_name,
                          beam_size=FLAGS.beam_size, max_image_pixels=FLAGS.max_image_pixels,
                          jit_compile=FLAGS.jit_compile)
    except (UncalibratedBeamSizeError, *input_errors()) as e:
        raise refusal(e) from None
    except BeamSizeError as e:
        raise app.UsageError(f"--{e}" if e.given else str(e)) from None
    except WarmupImageError as e:
        hint = " (raise it with --max_image_pixels)" if PIXEL_LIMIT_WORDS in e.reason else ""
        raise app.UsageError(f"--warmup_images: {paths[e.index]}: {e.reason}{hint}") from None
    except FileExistsError as e:
        raise app.UsageError(f"{e} (--version)") from None
    _published.append(os.path.normpath(path))
    print(os.path.normpath(path), flush=True)  # published: what follows cannot undo it
    if FLAGS.keep_versions:
        removed = remove_old_versions(FLAGS.export_dir, FLAGS.keep_versions, written=path,
                                      on_left=_say_left)
        if removed:
            say(f"{os.path.basename(sys.argv[0])}: removed {len(removed)} older version(s) "
                f"(--keep_versions={FLAGS.keep_versions}): {', '.join(removed)}")
    for words in rule:  # one, from the module the version was written from
        say(f"[export] the version labels an image by {words} (predict_with_threshold "
            f"takes another τ per image)")
    say(f"[export] written in {time.perf_counter() - started:.0f}s; serve it with: "
        f"{serve_command(FLAGS.export_dir, FLAGS.model_name, FLAGS.jit_compile)}"
        f"{newer_version_note(FLAGS.export_dir, path)}{closed_to_others_note(path)}")
    return 0


def closed_to_others_note(written: str) -> str:
    """A note where the modes of the version `written` or of its base path do not let
    every user read it (written under a umask such as 077): TF Serving usually runs as a
    user of its own, which could not load it."""
    base = os.path.dirname(os.path.abspath(written))
    opened = stat.S_IROTH | stat.S_IXOTH
    try:
        closed = (base if os.stat(base).st_mode & opened != opened
                  else unreadable_part(written, by_others=True))
    except OSError:  # removed meanwhile: nothing to say
        return ""
    if closed is None:
        return ""
    commands = [open_to_others_command(written)]
    if closed == base:
        commands.insert(0, shlex.join(["chmod", "a+rx", base]))
    return (f"; other users cannot read it ({closed}, as this umask left it): TF Serving "
            f"running as another user cannot load it until it is opened with: "
            f"{' && '.join(commands)}")


def newer_version_note(export_dir: str, written: str) -> str:
    """A note where `written` (a --version below the newest) is not what a server of
    `export_dir` serves: the newest version, as TF Serving does by default."""
    try:
        newest = os.path.join(export_dir, version_folders(export_dir)[-1][1])
        if os.path.samefile(newest, written):
            return ""
    except (OSError, IndexError):  # removed meanwhile: nothing to say
        return ""
    return (f" (which serves {os.path.normpath(newest)}, the newest version there, not this "
            f"one: TF Serving also serves the newest)")


def serve_command(export_dir: str, model_name: str, jit_compile: bool) -> str:
    """The ``ofrnn-serve`` command line that serves an export as it was written: under
    the model name its warm-up requests ask for, running its XLA functions if it has any
    (the server refuses them otherwise)."""
    serve = ["ofrnn-serve", f"--model_base_path={os.path.abspath(export_dir)}"]
    if model_name != DEFAULT_MODEL_NAME:
        serve.append(f"--model_name={model_name}")
    if jit_compile:
        serve.append("--xla_cpu_compilation_enabled")
    return shlex.join(serve)


def _say_left(path: str, reason: str) -> None:
    say(f"{os.path.basename(sys.argv[0])}: {path} {reason}: left as it is "
        f"(--keep_versions={FLAGS.keep_versions})")


def _say_left_out(path: str, reason: str) -> None:
    say(f"{os.path.basename(sys.argv[0])}: the run's example image {path} is left out of "
        f"the warm-up requests: {reason}")


def _given_warmup_images(pattern: str, count: int) -> list[str]:
    """The first `count` files `pattern` (--warmup_images) names, sorted: a folder's image
    files (by their extension, hidden ones passed over, as ofrnn-predict reads a folder),
    a file (its name may hold glob characters such as '['), or the files of a glob. None
    is a usage error, as is a count of 0, which would leave every one of them out."""
    if os.path.isdir(pattern):
        try:
            names = os.listdir(pattern)
        except OSError as error:
            raise app.UsageError(f"--warmup_images={pattern}: {error.strerror or error}"
                                 ) from None
        paths = sorted(p for p in (os.path.join(pattern, n) for n in names
                                   if named_as_image(n)) if os.path.isfile(p))
        if not paths:
            raise app.UsageError(f"--warmup_images={pattern}: the folder holds no "
                                 f"{IMAGE_KINDS} file")
    else:
        paths = [pattern] if os.path.isfile(pattern) else sorted(
            p for p in glob.glob(pattern) if os.path.isfile(p))
    if not paths:
        raise app.UsageError(f"--warmup_images={pattern} matches no file")
    if count == 0:
        raise app.UsageError("--num_warmup_images=0 leaves out every --warmup_images file: "
                             "give a count above 0, or leave out --warmup_images")
    return paths[:count]


def _read_warmup_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:  # removed since the glob, or not readable by this user
        raise app.UsageError(f"--warmup_images: {path}: {error.strerror or error}") from None


# The version folder this command has published, once it has (an interrupt says so).
_published: list[str] = []


def _after_interrupt() -> str:
    if not _published:
        return "no version was published; rerun the same command"
    return f"version {_published[0]} was published whole{_removal_note()}"


def _after_disk_full() -> str | None:
    """Once the version is published (its path is what stdout could not take), that a
    rerun is not needed; None before, where the advice to rerun holds."""
    if not _published:
        return None
    return (f"version {_published[0]} was published whole, so a rerun would only publish "
            f"another, identical version{_removal_note()}")


def _removal_note() -> str:
    if not FLAGS.keep_versions:
        return ""
    return (": the removal of older versions (--keep_versions) may have stopped part way; "
            "the next export with --keep_versions finishes it")


run = runner(define_flags, main, on_interrupt=_after_interrupt, on_disk_full=_after_disk_full)

if __name__ == "__main__":
    run()

"""ofrnn-predict: label sets for image files with a finished run, in this process.

    ofrnn-predict --workdir=runs/order_free photo.jpg more_photos/ --output=out.jsonl
    ofrnn-predict --workdir=runs/order_free photo.jpg more_photos/ --output=out.jsonl --resume
    find photos -iname '*.jpg' -print0 | ofrnn-predict --workdir=runs/order_free --files_from=-

Inputs are the arguments, then the lines of ``--files_from`` (a file, or ``-`` for standard
input: a whole tree's images in one process, which a long ``xargs`` list would split into
several, each loading the model). Folders are expanded to their files (sorted, not
recursive, hidden files passed over):
JPEG, PNG, GIF and BMP files are predicted (by their extension); any other file is named
on stderr and gets an ``error`` line, so every input is accounted for. Writes one JSON
line per input — ``image``, ``labels`` (decoding order), ``label_ids``, ``scores``,
``step_probabilities``, ``log_prob`` (and ``all_scores`` with --all_scores) — to stdout
or --output, each batch's lines as soon as it is done, so that a stopped command keeps
them: it says how many inputs have their line and which is the first without one, and the
same command with ``--resume`` skips the inputs ``--output`` has lines for and writes the
others after them (without it, the report is started again).
stderr says first how labels are chosen (the beam width K and τ: a label is added
while the path's probability, exp(log_prob), stays at least τ; ``scores`` are the chosen
labels' scores, whose values do not depend on τ: ``--all_scores`` gives every class's,
to rank images by a class). An image that cannot be read (a pipe nothing writes to
within 5 s and a device, such as a link to /dev/zero, included)
gets a line with ``error`` and the others go on; the exit status is 1 only when no
image at all could be predicted. With ``--attention_dir=DIR`` each predicted image is
also drawn with its attention at every decoding step (the paper's Fig. 3) as
``DIR/<input index>_<file stem>.png``, named in its line as ``attention_png`` (none is
drawn over an input image: that one is named on stderr instead).

Images are read as training read them: the EXIF orientation tag is not applied (a photo
stored sideways is predicted sideways: rotate it first), transparency is dropped, and a
GIF is its first frame. URLs are not fetched, and a quoted wildcard pattern is not expanded.
"""

import os
from typing import Iterable, Iterator

from absl import app, flags

from ofrnn_tf.cli import (
    input_errors, refusal, refuse_beam_size, refuse_below, refuse_glob_characters,
    refuse_non_probability, refuse_unwritable_folder, runner, trained_run)
from ofrnn_tf.cli.image_inputs import (
    FILES_FROM_HELP, LineFields, close_iterable, expand_inputs, file_id, file_ids, given_inputs,
    merge_results, pixel_limit_remedied, resumable_report, shows_progress, stopped_report,
    write_report)
from ofrnn_tf.features.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS
from ofrnn_tf.jsonio import out_of_room
from ofrnn_tf.status import say

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "The training run folder to predict with.")
    flags.DEFINE_string("output", None, "JSON-lines file to write (default, or -: stdout).")
    flags.DEFINE_integer("beam_size", None, "Beam width K (default: the run's; another K must "
                         "have been calibrated: ofrnn-train --mode=eval --decoding.beam_size=K).")
    flags.DEFINE_float("tau", None, "Threshold τ on the path probability (default: the one "
                       "calibrated for K; --threshold, ofrnn-client's name for it, is taken "
                       "too).")
    flags.DEFINE_alias("threshold", "tau")
    flags.DEFINE_integer("min_labels", None, "Labels every image gets at least, whatever τ "
                         "(default: the run's; --tau=0.5 --min_labels=0 on a baseline run is "
                         "the usual fixed rule, its test metrics' at_fixed_0.5).")
    flags.DEFINE_integer("batch_size", 32, "Images per backbone + decoder call.")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS,
                         "Images whose header declares more pixels are refused unread (as "
                         "ofrnn-export's flag of that name sets it for the served model).")
    flags.DEFINE_bool("all_scores", False, "Also write every class's score.")
    flags.DEFINE_string("attention_dir", None, "Also draw each image's attention at every "
                        "decoding step into this folder, one PNG per image.")
    flags.DEFINE_string("files_from", None, FILES_FROM_HELP)
    flags.DEFINE_bool("resume", False, "Go on from the lines --output holds, which a run with "
                      "the same inputs wrote before it stopped: its inputs are skipped and the "
                      "new lines follow them.")


def main(argv):
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    refuse_glob_characters("workdir", FLAGS.workdir)
    refuse_non_probability("tau", "threshold")
    refuse_below("max_image_pixels")
    refuse_beam_size()
    refuse_below("batch_size")
    refuse_below("min_labels", minimum=0)
    if FLAGS.attention_dir:
        refuse_unwritable_folder("attention_dir", FLAGS.attention_dir)
    # Standard input (`find … |`) is read once the run folder is known to be usable.
    inputs = None if FLAGS.files_from == "-" else given_inputs(argv[1:], FLAGS.files_from)
    trained_run(FLAGS.workdir, FLAGS.beam_size)
    if inputs is None:
        inputs = given_inputs(argv[1:], FLAGS.files_from)
    entries = expand_inputs(inputs, FLAGS.output)
    report = resumable_report(entries, FLAGS.output, FLAGS.resume, "ofrnn-predict",
                              line_fields(FLAGS.all_scores))
    if isinstance(report, int):  # every input had its line already
        return report
    out, progress = report
    # Here, after the flags and inputs are checked: TensorFlow takes seconds to import.
    from ofrnn_tf.inference.module import (
        BeamSizeError, MinLabelsError, UncalibratedBeamSizeError)
    from ofrnn_tf.inference.predictor import Predictor

    try:
        predictor = Predictor.from_run(FLAGS.workdir, beam_size=FLAGS.beam_size, tau=FLAGS.tau,
                                       min_labels=FLAGS.min_labels, batch_size=FLAGS.batch_size,
                                       max_image_pixels=FLAGS.max_image_pixels)
    except UncalibratedBeamSizeError as error:
        raise app.UsageError(f"{error} Or pass --tau.") from None
    except BeamSizeError as error:
        raise app.UsageError(f"--{error}" if error.given else str(error)) from None
    except MinLabelsError as error:
        raise app.UsageError(f"--{error}") from None
    except input_errors() as error:  # an edited label map, backbone weights out of reach
        raise refusal(error) from None
    draw = bool(FLAGS.attention_dir)
    if draw:
        if not predictor.module.has_attention:
            raise app.UsageError(f"--attention_dir: the run's {predictor.module.model.variant} "
                                 "variant has no attention to draw")
        try:  # before any prediction, so an unusable folder costs nothing
            os.makedirs(FLAGS.attention_dir, exist_ok=True)
        except OSError as error:
            raise app.UsageError(f"--attention_dir={FLAGS.attention_dir}: "
                                 f"{error.strerror or error}")
    say(f"[predict] {predictor.module.decision_rule()}")
    # Each line is written as its batch is done (a stopped command keeps them); on a
    # terminal the lines show the progress, where a bar would break them.
    predictions = predictor.iter_files(progress.paths, attention=draw,
                                       all_scores=FLAGS.all_scores, progress=shows_progress(out),
                                       keep_bytes=draw)
    if draw:
        predictions = _with_pictures(predictions, entries, FLAGS.attention_dir,
                                     first=progress.kept.count)
    lines = pixel_limit_remedied(merge_results(progress.left, predictions),
                                 " (raise it with --max_image_pixels)")
    return write_report(lines, out, "predict", "predicted", pictures_dir=FLAGS.attention_dir,
                        progress=progress)


def line_fields(all_scores: bool) -> LineFields:
    """The fields of a labelled line this command writes (``attention_png`` where its
    picture was drawn), which the lines ``--resume`` keeps must hold as well."""
    always = {"labels", "label_ids", "scores", "step_probabilities", "log_prob"}
    return LineFields(frozenset(always | ({"all_scores"} if all_scores else set())),
                      maybe=frozenset({"attention_png"}))


def _with_pictures(predictions: Iterable[dict], entries: list, out_dir: str, first: int = 0
                   ) -> Iterator[dict]:
    """Draws each prediction's attention maps into `out_dir`; its line names the PNG
    instead of holding the maps. Pictures are numbered by the input's place among all the
    inputs (the predictions are those of the entries from `first` on, where a resumed
    report goes on); one that would overwrite an input is not drawn. Each picture is drawn
    from the bytes its prediction read (``image_bytes``, left out of the line): an input
    read from a pipe is not read again. Closed, it closes `predictions`."""
    from ofrnn_tf.tf_errors import op_error_text
    from ofrnn_tf.visualization.attention_maps import draw_prediction, picture_path

    places = [k for k in range(first, len(entries)) if isinstance(entries[k], str)]
    inputs = None  # the inputs' file identities, found when a picture's file exists
    full = False  # the disk filled: no more pictures, the predictions go on
    predictions = iter(predictions)
    try:
        # strict: the predictions are run to their end (their progress bar closes) at the
        # last.
        for place, result in zip(places, predictions, strict=True):
            read = result.pop("image_bytes", None)
            if full:
                result.pop("attention", None)
            if "attention" in result:  # not an input that could not be predicted
                target = picture_path(result["image"], out_dir, place)
                if os.path.exists(target):
                    inputs = file_ids(entries) if inputs is None else inputs
                    if file_id(target) in inputs:
                        say(f"[predict] {result['image']}: no attention picture: {target} is "
                            f"one of the inputs, which it would overwrite")
                        del result["attention"]
                        yield result
                        continue
                try:
                    result["attention_png"] = draw_prediction(dict(result, image_bytes=read),
                                                              out_dir, place)
                except Exception as error:  # noqa: BLE001 - the prediction stands, not its picture
                    reason = (error.strerror if isinstance(error, OSError) and error.strerror
                              else op_error_text(error))
                    if out_of_room(error):
                        full = True
                        say(f"[predict] --attention_dir={out_dir}: {reason} writing {target}: "
                            f"no more attention pictures are drawn; the predictions go on")
                    else:
                        say(f"[predict] {result['image']}: no attention picture: {reason}")
                del result["attention"]
            yield result
    finally:
        close_iterable(predictions)


run = runner(define_flags, main, on_interrupt=stopped_report,
             on_disk_full=lambda: stopped_report("free space, then "))

if __name__ == "__main__":
    run()

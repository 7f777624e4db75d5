"""ofrnn-predict: label sets for image files with a finished run, in this process.

    ofrnn-predict --workdir=runs/order_free photo.jpg more_photos/ --output=out.jsonl

Folders are expanded to their files (sorted, not recursive): JPEG, PNG, GIF and BMP
files are predicted; any other file is named on stderr and gets an ``error`` line, so
every input is accounted for. Writes one JSON line per input — ``image``, ``labels``
(decoding order), ``label_ids``, ``scores``, ``step_probabilities``, ``log_prob`` (and
``all_scores`` with --all_scores) — to stdout or --output. An image that cannot be read
gets a line with ``error`` and the others go on; the exit status is 1 only when no
image at all could be predicted.
"""

import json
import os
import sys

from absl import app, flags

from ofrnn_tf.cli import runner
from ofrnn_tf.inference.predictor import Predictor

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "The training run folder to predict with.")
    flags.DEFINE_string("output", None, "JSON-lines file to write (default: stdout).")
    flags.DEFINE_integer("beam_size", None, "Beam width K (default: the run's; another K must "
                         "have been calibrated: ofrnn-train --mode=eval --decoding.beam_size=K).")
    flags.DEFINE_float("tau", None, "Threshold τ on the path probability (default: the one "
                       "calibrated for K).")
    flags.DEFINE_integer("batch_size", 32, "Images per backbone + decoder call.")
    flags.DEFINE_bool("all_scores", False, "Also write every class's score.")


def expand_inputs(arguments: list[str]) -> list:
    """Each argument in order as image paths (folders expanded), or an error record for a
    folder without images and for every file of a folder that is not an accepted image."""
    entries: list = []
    for argument in arguments:
        if not os.path.isdir(argument):
            entries.append(argument)  # a missing or unreadable file becomes an error when read
            continue
        names = sorted(n for n in os.listdir(argument)
                       if os.path.isfile(os.path.join(argument, n)))
        images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not images:
            entries.append({"image": argument, "error": f"{argument}: folder holds no "
                            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file"})
        for name in names:
            path = os.path.join(argument, name)
            if name in images:
                entries.append(path)
            else:
                kind = os.path.splitext(name)[1] or "no extension"
                entries.append({"image": path, "error": f"{path}: skipped ({kind}): accepted "
                                f"formats are JPEG, PNG, GIF and BMP"})
    return entries


def main(argv):
    arguments = argv[1:]
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    if not arguments:
        raise app.UsageError("give at least one image file or folder after the flags")
    entries = expand_inputs(arguments)
    paths = [e for e in entries if isinstance(e, str)]
    predictor = Predictor.from_run(FLAGS.workdir, beam_size=FLAGS.beam_size, tau=FLAGS.tau,
                                   batch_size=FLAGS.batch_size)
    predictions = iter(predictor.predict_files(paths, attention=False,
                                               all_scores=FLAGS.all_scores, progress=True))
    results = [next(predictions) if isinstance(e, str) else e for e in entries]
    out = open(FLAGS.output, "w") if FLAGS.output else sys.stdout
    try:
        for result in results:
            out.write(json.dumps(result, allow_nan=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    failed = [r for r in results if "error" in r]
    for result in failed:
        print(f"[predict] {result['error']}", file=sys.stderr)
    num_predicted = len(results) - len(failed)
    print(f"[predict] {num_predicted} image(s) predicted, {len(failed)} failed or skipped"
          + (f"; written to {FLAGS.output}" if FLAGS.output else ""), file=sys.stderr)
    return 0 if num_predicted else 1


run = runner(define_flags, main)

if __name__ == "__main__":
    run()

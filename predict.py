"""Predicts label sets for image files with a finished run, in this process.

    python predict.py --workdir=runs/order_free photo.jpg more_photos/ --output=out.jsonl

Folders are expanded to their image files (jpg, jpeg, png, bmp, gif; sorted, not
recursive). Writes one JSON line per image — `image`, `labels` (decoding order),
`label_ids`, `scores`, `step_probabilities`, `log_prob` (and `all_scores` with
--all_scores) — to stdout or --output. An image that cannot be read gets a line
with `error` and the others go on; the exit status is 1 only when no image at all
could be predicted.
"""

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The train.py run directory to predict with.")
flags.DEFINE_string("output", None, "JSON-lines file to write (default: stdout).")
flags.DEFINE_integer("beam_size", None, "Beam width K (default: the run's calibrated one).")
flags.DEFINE_float("tau", None, "Threshold τ on the path probability (default: the calibrated one).")
flags.DEFINE_integer("batch_size", 32, "Images per backbone + decoder call.")
flags.DEFINE_bool("all_scores", False, "Also write every class's score.")
flags.mark_flag_as_required("workdir")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def expand_inputs(arguments: list[str]) -> list:
    """Each argument in order as image paths (folders expanded), or an error record
    for a folder without images."""
    entries: list = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(argument, name)))
            if not found:
                entries.append({"image": argument, "error": f"{argument}: folder holds no "
                                f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file"})
            entries.extend(found)
        else:
            entries.append(argument)  # a missing file becomes an error line when read
    return entries


def main(argv):
    arguments = argv[1:]
    if not arguments:
        raise app.UsageError("give at least one image file or folder after the flags")
    from ofrnn_tf.evaluation.predictor import Predictor

    entries = expand_inputs(arguments)
    paths = [e for e in entries if isinstance(e, str)]
    predictor = Predictor.from_workdir(FLAGS.workdir, beam_size=FLAGS.beam_size, tau=FLAGS.tau,
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
    print(f"[predict] {num_predicted} image(s) predicted, {len(failed)} failed"
          + (f"; written to {FLAGS.output}" if FLAGS.output else ""), file=sys.stderr)
    return 0 if num_predicted else 1


if __name__ == "__main__":
    app.run(main)

"""Exports a trained run as a SavedModel for TensorFlow Serving.

    python export.py --workdir=runs/order_free --export_dir=exports/ofrnn

writes `exports/ofrnn/<version>/` (the next free integer unless --version is given)
with the `serving_default` (image bytes) and `predict_features` signatures, the
calibrated τ, K and T_max inside, and `assets.extra/tf_serving_warmup_requests`.
Inspect it with `saved_model_cli show --all --dir exports/ofrnn/1`.
"""

import glob

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished train.py run directory.")
flags.DEFINE_string("export_dir", None, "Model base path: versions go in numbered sub-folders.")
flags.DEFINE_integer("version", None, "Version number (default: the next free one).")
flags.DEFINE_string("warmup_images", None, "Glob of images for the warm-up requests "
                    "(default: one gray image).")
flags.DEFINE_integer("num_warmup_images", 4, "At most this many warm-up images.")
flags.DEFINE_bool("jit_compile", True, "XLA-compile the beam search inside the export (the "
                  "backbone is not: XLA is slower for it on CPU). Each new batch size compiles "
                  "once (about 2 s on CPU); the warm-up requests cover batch sizes 1 and 8.")
flags.DEFINE_string("model_name", "ofrnn", "Model name written into the warm-up requests.")
flags.mark_flags_as_required(["workdir", "export_dir"])


def main(argv):
    del argv
    from ofrnn_tf.export.saved_model import export_run

    images = []
    if FLAGS.warmup_images:
        for path in sorted(glob.glob(FLAGS.warmup_images))[:FLAGS.num_warmup_images]:
            with open(path, "rb") as f:
                images.append(f.read())
    path = export_run(FLAGS.workdir, FLAGS.export_dir, version=FLAGS.version,
                      warmup_images=images, jit_compile=FLAGS.jit_compile,
                      model_name=FLAGS.model_name)
    print(path)


if __name__ == "__main__":
    app.run(main)
